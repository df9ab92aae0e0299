"""Coverage on models nobody here wrote: on every model ``bench/coverage.py`` sweeps, the
analysis counts parameters exactly and each scheme keeps the function or refuses with
an ``FxSurgeonError`` (``fxsurgeon.experiments.coverage.check`` does the work). CI runs a sample of
cheap, diverse models; ``pytest --full`` runs them all (an hour or more)."""
import pytest

pytest.importorskip("timm")

from fxsurgeon.experiments.coverage import SCHEMES, SOURCES, check, models, worse  # noqa: E402 - needs timm

#: cheap (seconds each) and diverse: a plain ResNet; timm's BatchNormAct2d (depthwise,
#: squeeze-excitation); a ViT (LayerNorm: it grows at 1.5x); ghost modules (a
#: concatenation sliced by a constant); MobileViT (blocks timm keeps from tracing, SiLU
#: inside BatchNormAct2d); a grouped conv after zero padding; a segmentation head; an FPN
#: backbone; 3-d convs; 3-d shifted windows; from other libraries, MONAI's residual UNet
#: (fx), GPT-2 (token ids, torch.export, a dataclass out) and a diffusers UNet (a sample and
#: its timesteps in)
SAMPLE = {("timm", "test_resnet"), ("timm", "test_efficientnet"), ("timm", "test_vit"),
          ("timm", "ghostnet_050"), ("timm", "mobilevit_xxs"), ("timm", "cpubone_nano"),
          ("segmentation", "lraspp_mobilenet_v3_large"),
          ("detection", "fasterrcnn_mobilenet_v3_large_320_fpn"), ("video", "mc3_18"), ("video", "swin3d_t"),
          ("libraries", "monai.UNet"), ("libraries", "transformers.GPT2LMHeadModel"),
          ("libraries", "diffusers.UNet2DModel")}


def _sweep() -> list:
    return [pytest.param(source, name, id=f"{source}:{name}",
                         marks=() if (source, name) in SAMPLE else pytest.mark.slow)
            for source in SOURCES for name in models(source)]


def _acceptable(outcome: str) -> bool:
    """Same, or a refusal with a reason that is a limit, not fxsurgeon's own bug."""
    return outcome in ("same", "exact") or (outcome.startswith("refused: ") and len(outcome) > 10
                                            and " bug in " not in outcome)


@pytest.mark.parametrize(("source", "name"), _sweep())
def test_surgery_keeps_the_function_or_refuses_with_a_reason(source, name):
    if source == "libraries":
        pytest.importorskip(name.split(".")[0])
    record = check(source, name)
    if record.get("skipped"):
        pytest.skip(record["skipped"])
    if not record["traced"]:
        pytest.skip(f"not traceable: {record['untraceable']}")
    bad = {k: record[k] for k in ("analysed", *SCHEMES) if k in record and not _acceptable(record[k])}
    assert not bad, "\n".join(f"{k}: {v}\n{record.get('tracebacks', {}).get(k, '')}" for k, v in bad.items())


def test_a_scheme_is_same_only_when_every_draw_is():
    record = check("timm", "test_resnet", draws=2)
    assert record["draws"] == 2 and all(record[s] == "same" for s in SCHEMES)
    assert worse("same", "refused: why (draw 1)") == "refused: why (draw 1)"
    assert worse("CHANGED: 1e-3", "refused: why (draw 1)") == "CHANGED: 1e-3"
    assert worse("same", "same") == "same"
