"""NR and DemP inside PyTorch Lightning's and HuggingFace's trainers (fxsurgeon.integrations):
an event fires, the trainer's model runs the new network, its optimizer trains the new
parameters and its scheduler steps on, and a run resumed from the trainer's checkpoint written
after the event goes on with the same widths and weights."""
import importlib
import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxsurgeon as fxs
from fxsurgeon.errors import FxSurgeonError
from helpers.training import kill_relu_units
from wrapped import batch, small_net

STEPS, LR = 4, 0.05


def dead_net() -> nn.Sequential:
    """``small_net`` with three channels of its first dimension dead for good."""
    net = small_net()
    kill_relu_units(net)
    return net


def method(kind: str, snapshots: list) -> dict:
    """The callback's method and options: a surgery at step 2, each new network's parameters
    kept in ``snapshots`` as the surgery leaves them. DemP's penalty is proximal (applied after
    the step, with the step's LR), its noise goes to the entries with a gradient before it."""
    def keep(surgery_record):
        snapshots.append({n: p.detach().clone() for n, p in surgery_record.surgery.module.named_parameters()})
    if kind == "nr":
        return {"method": fxs.NeuralRejuvenation, "threshold": 1.0, "check_every": 2, "round_to": 1,
                "on_event": keep}
    return {"method": fxs.DemP, "death_set": [batch()[0]], "total_steps": STEPS, "prune_every": 2,
            "sparsity": "proximal", "reg_peak": 1e-2, "on_prune": keep}


def optimizer_and_scheduler(params):
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9)
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


def by_hand(kind):
    """The same run as a hand-written loop calling the method's ``step()``."""
    options = method(kind, [])
    net = dead_net()
    opt, sched = optimizer_and_scheduler(net.parameters())
    wrapper = options.pop("method")(net, batch()[0][:1], opt, **options)
    x, y = batch()
    for _ in range(STEPS):
        opt.zero_grad()
        F.cross_entropy(wrapper.model(x), y).backward()
        wrapper.step()
        sched.step()
    return wrapper


def check_trained_after_event(wrapper, network, optimizer, snapshots):
    """The trainer's model runs the network of the last surgery, of other widths than the
    original; the optimizer holds exactly its parameters and changed them since the event;
    the scheduler halved the LR at every step."""
    first = wrapper.surgeries[0]
    assert first.step == 2 and first.widths_after != first.widths_before
    assert network is wrapper.model and network.network is wrapper.surgeries[-1].surgery.module
    params = dict(network.network.named_parameters())
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in params.values()}
    changed = [n for n, p in params.items() if not torch.equal(p, snapshots[0][n])]
    assert "0.weight" in changed and "3.weight" in changed
    assert optimizer.param_groups[0]["lr"] == pytest.approx(LR * 0.5 ** STEPS)


def check_same_run(a, b, exact=True):
    """Two runs' methods hold the same networks (bit for bit where ``exact``) after the same
    surgeries and steps."""
    assert a.steps == b.steps == STEPS and len(a.surgeries) == len(b.surgeries)
    sa, sb = a.model.network.state_dict(), b.model.network.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], **({"rtol": 0, "atol": 0} if exact else {}), msg=k)


# ---- PyTorch Lightning ---------------------------------------------------------------------
def lightning_fit(kind, folder, resume=None, steps=STEPS, batch_size=4, **trainer_args):
    """Fit a LightningModule holding ``dead_net`` at ``net`` for ``steps`` steps (the batch an
    epoch) with the callback of ``kind`` (None: none), writing a checkpoint after every epoch,
    or resuming from ``resume``."""
    L = pytest.importorskip("lightning.pytorch")
    from fxsurgeon.integrations.lightning import SurgeryCallback

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = dead_net()

        def training_step(self, data, index):
            x, y = data
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            opt, sched = optimizer_and_scheduler(self.parameters())
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    snapshots = []
    callbacks = [L.callbacks.ModelCheckpoint(dirpath=folder, filename="{step}", save_top_k=-1,
                                             every_n_epochs=1, save_on_train_epoch_end=True)]
    if kind:
        options = method(kind, snapshots)
        callbacks.append(SurgeryCallback(example_inputs=batch()[0][:1], attribute="net", **options))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        **trainer_args)
    module = Classifier()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*batch()), batch_size=batch_size)
    trainer.fit(module, data, ckpt_path=resume)
    return module, trainer, callbacks[-1], snapshots


@pytest.mark.parametrize("kind", ["nr", "demp"])
def test_lightning_runs_the_method_and_resumes_after_its_event(kind, tmp_path):
    module, trainer, callback, snapshots = lightning_fit(kind, tmp_path)
    assert trainer.global_step == STEPS and trainer.lr_scheduler_configs[0].scheduler.last_epoch == STEPS
    check_trained_after_event(callback.wrapper, module.net, trainer.optimizers[0], snapshots)
    check_same_run(callback.wrapper, by_hand(kind))

    _, resumed, again, _ = lightning_fit(kind, tmp_path / "resumed", resume=tmp_path / "step=3.ckpt")
    assert resumed.global_step == STEPS
    assert again.wrapper.surgeries[0].widths_after == callback.wrapper.surgeries[0].widths_after
    check_same_run(callback.wrapper, again.wrapper)


def test_lightning_starts_the_method_from_a_checkpoint_written_without_it(tmp_path):
    """A plain run's checkpoint loads into the network the method is then built on."""
    plain, *_ = lightning_fit(None, tmp_path, steps=1)
    _, _, callback, _ = lightning_fit("nr", tmp_path / "nr", resume=tmp_path / "step=1.ckpt", steps=1)
    assert callback.wrapper.steps == 0
    assert not torch.equal(plain.net[0].weight, dead_net()[0].weight)       # it trained a step
    torch.testing.assert_close(callback.wrapper.model.network.state_dict(), plain.net.state_dict())


# ---- HuggingFace ----------------------------------------------------------------------------
class Classifier(nn.Module):
    """A model as the HuggingFace Trainer calls it: keyword tensors in, a dict with the loss out."""

    def __init__(self):
        super().__init__()
        self.net = dead_net()

    def forward(self, pixels, labels):
        logits = self.net(pixels)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def hf_trainer(callback, folder, **args):
    """HuggingFace's Trainer on a fresh ``Classifier`` with ``callback``, the batch as its data
    (one step an epoch unless ``args`` say otherwise), SGD and a StepLR, no gradient clipping."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    x, y = batch()
    model = Classifier()
    args = transformers.TrainingArguments(output_dir=str(folder), report_to=[], logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True, max_grad_norm=0.0,
                                          **{"per_device_train_batch_size": 4, **args})
    return transformers.Trainer(model=model, args=args, callbacks=[callback],
                                train_dataset=[{"pixels": a, "labels": b} for a, b in zip(x, y, strict=True)],
                                optimizers=optimizer_and_scheduler(model.parameters()))


def hf_train(kind, folder, resume=None):
    """Train for STEPS steps, writing a checkpoint at step 3, or resuming from ``resume``."""
    pytest.importorskip("transformers")
    from fxsurgeon.integrations.huggingface import SurgeryCallback

    snapshots = []
    callback = SurgeryCallback(example_inputs=batch()[0][:1], attribute="net", resume_from=resume,
                               **method(kind, snapshots))
    trainer = hf_trainer(callback, folder, max_steps=STEPS, save_strategy="steps", save_steps=3)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer.model, trainer, callback, snapshots


@pytest.mark.parametrize("kind", ["nr", "demp"])
def test_huggingface_runs_the_method_and_resumes_after_its_event(kind, tmp_path):
    model, trainer, callback, snapshots = hf_train(kind, tmp_path)
    assert trainer.state.global_step == STEPS and trainer.lr_scheduler.last_epoch == STEPS
    check_trained_after_event(callback.wrapper, model.net, trainer.optimizer, snapshots)
    check_same_run(callback.wrapper, by_hand(kind), exact=False)      # the Trainer shuffles the batch

    _, resumed, again, _ = hf_train(kind, tmp_path / "resumed", resume=tmp_path / "checkpoint-3")
    assert resumed.state.global_step == STEPS
    assert again.wrapper.surgeries[0].widths_after == callback.wrapper.surgeries[0].widths_after
    check_same_run(callback.wrapper, again.wrapper)


def test_huggingface_needs_the_optimizer_when_the_trainer_is_built(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from fxsurgeon.integrations.huggingface import SurgeryCallback

    callback = SurgeryCallback(fxs.NeuralRejuvenation, batch()[0][:1], attribute="net")
    args = transformers.TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(FxSurgeonError, match="optimizers="):
        transformers.Trainer(model=Classifier(), args=args, callbacks=[callback])


def test_huggingface_refuses_a_resume_its_callback_was_not_given(tmp_path):
    """The Trainer resumes from a checkpoint, the callback's method starts afresh: refused when
    training begins, naming how to resume both."""
    pytest.importorskip("transformers")
    from fxsurgeon.integrations.huggingface import SurgeryCallback

    def callback():
        return SurgeryCallback(fxs.NeuralRejuvenation, batch()[0][:1], attribute="net", check_every=2)
    hf_trainer(callback(), tmp_path, max_steps=1, save_strategy="steps", save_steps=1).train()
    with pytest.raises(FxSurgeonError, match="resume_from=folder"):
        hf_trainer(callback(), tmp_path / "again", max_steps=2).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


@pytest.mark.parametrize("trainer", ["lightning", "huggingface"])
def test_gradient_accumulation_counts_the_optimizer_steps(trainer, tmp_path):
    """Two batches of two a step: the method counts the trainer's optimizer steps, not its
    batches, and its event comes at its second step."""
    if trainer == "lightning":
        _, run, callback, _ = lightning_fit("nr", tmp_path, batch_size=2, accumulate_grad_batches=2)
        taken = run.global_step
    else:
        pytest.importorskip("transformers")
        from fxsurgeon.integrations.huggingface import SurgeryCallback

        callback = SurgeryCallback(example_inputs=batch()[0][:1], attribute="net", **method("nr", []))
        run = hf_trainer(callback, tmp_path, max_steps=STEPS, per_device_train_batch_size=2,
                         gradient_accumulation_steps=2, save_strategy="no")
        run.train()
        taken = run.state.global_step
    assert taken == callback.wrapper.steps == STEPS and callback.wrapper.events[0].step == 2


# ---- both ------------------------------------------------------------------------------------
def test_an_unknown_attribute_and_method_are_named():
    from fxsurgeon.integrations.base import TrainerSurgery

    with pytest.raises(FxSurgeonError, match="NeuralRejuvenation or fxsurgeon.DemP"):
        TrainerSurgery(torch.optim.SGD, batch()[0], "net", {})
    surgery = TrainerSurgery(fxs.NeuralRejuvenation, batch()[0], "body.net", {})
    with pytest.raises(FxSurgeonError, match="no module 'body.net'"):
        surgery.start(Classifier(), torch.optim.SGD(Classifier().parameters(), lr=0.1))


@pytest.mark.parametrize("name, install", [("lightning", "pip install lightning"),
                                           ("huggingface", "pip install transformers")])
def test_a_missing_trainer_is_named_with_what_to_install(name, install, monkeypatch):
    for package in ("lightning", "lightning.pytorch", "transformers"):
        monkeypatch.setitem(sys.modules, package, None)      # import fails as if not installed
    monkeypatch.delitem(sys.modules, f"fxsurgeon.integrations.{name}", raising=False)
    with pytest.raises(FxSurgeonError, match=install):
        importlib.import_module(f"fxsurgeon.integrations.{name}")


DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


@pytest.mark.parametrize("trainer, printed", [("lightning", "features.0: 16 channels, 12 alive"),
                                              ("transformers", "channels removed")])
def test_the_docs_examples_run(trainer, printed, tmp_path, monkeypatch, capsys):
    """docs/integrations.md's example for each trainer runs (its asserts included), writing its
    checkpoints under out/ of the folder it runs in."""
    for package in (trainer, "sklearn") + (("accelerate",) if trainer == "transformers" else ()):
        pytest.importorskip(package)
    example, = [code for code in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
                if f"from {trainer} import" in code or f"import {trainer} " in code]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(DOC), "exec"), {"__name__": "__main__"})
    assert printed in capsys.readouterr().out
