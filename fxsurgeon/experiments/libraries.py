"""The ``libraries`` source of the coverage sweep: models from libraries nobody here wrote
(diffusers, MONAI, HuggingFace transformers, kornia, segmentation-models-pytorch), each built
from a tiny config, with nothing downloaded (issue #31).

:data:`LIBRARIES` maps a name to a builder returning ``(model, inputs)``: the float32 model
with random weights and its example inputs, a tuple of positional arguments (batch 2: the
sweep's second draw takes the first of every batched input). Each library is imported only
by its own builders, so a missing one fails only its models.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Builder = Callable[[], tuple[nn.Module, tuple]]
LIBRARIES: dict[str, Builder] = {}


def _builder(name: str):
    def register(fn: Builder) -> Builder:
        LIBRARIES[name] = fn
        return fn
    return register


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


# --- diffusers: sample and timestep (and the text condition); outputs are dataclasses ---

_UNET = dict(layers_per_block=1, block_out_channels=(16, 32), norm_num_groups=8)


@_builder("diffusers.UNet2DModel")
def _unet2d():
    import diffusers
    model = diffusers.UNet2DModel(sample_size=8, in_channels=4, out_channels=4, **_UNET,
                                  down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                  up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return model, (torch.randn(2, 4, 8, 8, generator=_g()), torch.tensor([3, 7]))


@_builder("diffusers.UNet2DConditionModel")
def _unet2d_condition():
    import diffusers
    model = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, cross_attention_dim=8, attention_head_dim=4, **_UNET,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    g = _g()    # the text condition: 3 tokens of 8 features
    text = torch.randn(2, 3, 8, generator=g)
    return model, (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([3, 7]), text)


@_builder("diffusers.AutoencoderKL")
def _autoencoder_kl():
    import diffusers
    model = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **_UNET,
                                    down_block_types=("DownEncoderBlock2D",) * 2,
                                    up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    # sample_posterior=False: the latent is the posterior's mode, no noise drawn
    return model, (torch.randn(2, 3, 16, 16, generator=_g()),)


@_builder("diffusers.UNet1DModel")
def _unet1d():
    import diffusers
    # the default blocks (Dance Diffusion's) with narrower channels
    # (attention has a head per 32 channels; the Fourier embedding, twice the first width, is
    # concatenated to the sample: extra_in_channels)
    model = diffusers.UNet1DModel(sample_size=32, in_channels=2, out_channels=2, extra_in_channels=32,
                                  block_out_channels=(16, 32, 32))
    return model, (torch.randn(2, 2, 32, generator=_g()), torch.tensor([3, 7]))


# --- MONAI: 2-d images, BatchNorm where it offers one ---

@_builder("monai.AttentionUnet")
def _attention_unet():
    from monai.networks.nets import AttentionUnet
    model = AttentionUnet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    return model, (torch.randn(2, 1, 32, 32, generator=_g()),)


@_builder("monai.UNet")
def _monai_unet():
    from monai.networks.nets import UNet
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                 num_res_units=2, norm="batch")
    return model, (torch.randn(2, 1, 32, 32, generator=_g()),)


@_builder("monai.SegResNet")
def _segresnet():
    from monai.networks.nets import SegResNet
    model = SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2, norm="batch",
                      blocks_down=(1, 2, 2), blocks_up=(1, 1))
    return model, (torch.randn(2, 1, 32, 32, generator=_g()),)


@_builder("monai.VNet")
def _vnet():
    from monai.networks.nets import VNet
    model = VNet(spatial_dims=2, in_channels=1, out_channels=2)   # its widths are fixed (16 to 256)
    return model, (torch.randn(2, 1, 32, 32, generator=_g()),)


@_builder("monai.SwinUNETR")
def _swin_unetr():
    from monai.networks.nets import SwinUNETR
    # 2-d: the deepest of its five stages is 1/32 of the side, and its InstanceNorm needs 2x2 there
    model = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)
    return model, (torch.randn(2, 1, 64, 64, generator=_g()),)


# --- HuggingFace transformers: token ids in (export front end), logits out ---

_LM = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           max_position_embeddings=64)


def _tokens() -> tuple:
    return (torch.randint(0, 64, (2, 7), generator=_g()),)


def _causal_lm(config: str, model: str, **kwargs):
    import transformers
    return getattr(transformers, model)(getattr(transformers, config)(**{**_LM, **kwargs})), _tokens()


@_builder("transformers.LlamaForCausalLM")
def _llama():
    return _causal_lm("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2)


@_builder("transformers.Qwen2ForCausalLM")
def _qwen2():
    return _causal_lm("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=2)


@_builder("transformers.MistralForCausalLM")
def _mistral():
    return _causal_lm("MistralConfig", "MistralForCausalLM", num_key_value_heads=2)


@_builder("transformers.PhiForCausalLM")
def _phi():
    return _causal_lm("PhiConfig", "PhiForCausalLM")


@_builder("transformers.GPT2LMHeadModel")
def _gpt2():
    import transformers
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)   # (in the vocabulary)
    return transformers.GPT2LMHeadModel(config), _tokens()


@_builder("transformers.BertModel")
def _bert():
    import transformers
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config), _tokens()


@_builder("transformers.Wav2Vec2Model")
def _wav2vec2():
    import transformers
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4)
    return transformers.Wav2Vec2Model(config), (torch.randn(2, 400, generator=_g()),)


# --- kornia ---

@_builder("kornia.HardNet8")
def _hardnet8():
    from kornia.feature import HardNet8
    return HardNet8(pretrained=False), (torch.randn(2, 1, 32, 32, generator=_g()),)


# --- segmentation-models-pytorch: encoders and decoders built without weights ---

def _smp(arch: str, encoder: str):
    import segmentation_models_pytorch as smp
    model = getattr(smp, arch)(encoder, encoder_weights=None, classes=2)
    return model, (torch.randn(2, 3, 64, 64, generator=_g()),)


for _arch, _encoder in (("Unet", "mobilenet_v2"), ("FPN", "efficientnet-b0"), ("UnetPlusPlus", "resnet18"),
                        ("MAnet", "timm-regnety_002")):
    _builder(f"smp.{_arch}({_encoder})")(lambda a=_arch, e=_encoder: _smp(a, e))
