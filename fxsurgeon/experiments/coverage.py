"""Coverage on models nobody here wrote: the model lists, and one model's surgery check.

:func:`check` builds a model in float64 and eval mode, randomises its BatchNorm
statistics, analyses it (the parameter count must be exact), zeroes the γ of 30 % of
every free dimension's channels, then runs ``prune``, ``nr``, ``cr`` and ``ca`` (with
neural rescaling) and compares every output tensor with the original model's. It
returns a JSON-friendly record; ``tests/test_coverage.py`` asserts on it and
``bench/coverage.py`` tabulates it in ``docs/coverage.md``. It needs timm (a test and
bench dependency), imported only where a timm model is built.

Sources: ``timm`` (one model per architecture family, see :data:`TIMM_FAMILIES`),
``segmentation`` (torchvision), ``detection`` (the ``backbone`` of each torchvision
detector, with its FPN or SSD extra layers), ``video`` (torchvision) and ``libraries``
(diffusers, MONAI, HuggingFace transformers and kornia models from tiny configs, see
:mod:`fxsurgeon.experiments.libraries`: several inputs, dataclass outputs).
"""
from __future__ import annotations

import dataclasses
import math
import time
import traceback
import warnings

import torch
import torchvision

from ..analysis.graph import analyze
from ..errors import FxSurgeonError, UntraceableModelError
from ..judging.liveliness import liveliness
from ..planning.planner import plan as make_plan
from ..surgery.judges import JUDGES, add_judges
from ..surgery.rewriter import rewrite
from ..zoo.dead import kill_channels as kill
from ..zoo.dead import randomise_norms
from .libraries import LIBRARIES

SOURCES = ("timm", "segmentation", "detection", "video", "libraries")
SCHEMES = ("prune", "nr", "cr", "ca")
#: largest relative difference (per output tensor, against its largest magnitude) still "same"
TOLERANCE = 1e-8
#: the budget of the growing schemes where nothing died (else 1.0: what the dead freed)
GROWTH = 1.5
#: models above this many parameters are skipped: float64 surgery keeps several copies
MAX_PARAMS = 150_000_000
#: models skipped whatever their size, and why
SKIP = {name: "float64 analysis at its fixed 16x224x224 input peaks at 11 GB, surgery past 20 GB"
        for name in ("mvit_v1_b", "mvit_v2_s")}

#: The smallest timm model (by parameter count at its default config) of every timm
#: architecture family, a family being the module that registers the model
#: (``timm.models.resnet``). Found by :func:`smallest_per_family` on timm 1.0.31;
#: ``python bench/coverage.py --families`` prints it again for another timm.
TIMM_FAMILIES = {
    "beit": "beit_base_patch16_224", "byoanet": "halonet_h1", "byobnet": "test_byobnet",
    "cait": "cait_xxs24_224", "coat": "coat_tiny", "convit": "convit_tiny",
    "convmixer": "convmixer_768_32", "convnext": "test_convnext", "cpubone": "cpubone_nano",
    "crossvit": "crossvit_tiny_240", "csatv2": "csatv2", "cspnet": "cs3darknet_focus_s",
    "cspnext": "cspnext_tiny", "davit": "davit_tiny", "deepseek_vit": "deepseek_vit_412m",
    "deit": "deit_tiny_patch16_224", "densenet": "densenet121", "dla": "dla46x_c", "dpn": "dpn48b",
    "edgenext": "edgenext_xx_small", "efficientformer": "efficientformer_l1",
    "efficientformer_v2": "efficientformerv2_s0", "efficientnet": "test_efficientnet",
    "efficientvim": "efficientvim_m1", "efficientvit_mit": "efficientvit_b0",
    "efficientvit_msra": "efficientvit_m0", "eva": "vit_tiny_patch16_dinov3_qkvb",
    "fasternet": "fasternet_t0", "fastvit": "fastvit_t8", "focalnet": "focalnet_tiny_srf",
    "gcvit": "gcvit_xxtiny", "gemma4_vit": "gemma4_vit_167m", "ghostnet": "ghostnet_050",
    "hardcorenas": "hardcorenas_b", "hgnet": "hgnetv2_b0", "hiera": "hiera_tiny_224",
    "hieradet_sam2": "sam2_hiera_tiny", "hrnet": "hrnet_w18_small", "iformer": "iformer_t",
    "inception_next": "inception_next_atto", "inception_resnet_v2": "inception_resnet_v2",
    "inception_v3": "inception_v3", "inception_v4": "inception_v4", "lcnetv2": "lcnetv2_small",
    "levit": "levit_128s", "lowformer": "lowformer_b0", "mambaout": "test_mambaout",
    "maxxvit": "test_coatnet", "metaformer": "poolformerv2_s12", "mlp_mixer": "gmlp_ti16_224",
    "mobilenetv3": "mobilenetv3_small_050", "mobilenetv5": "mobilenetv5_base",
    "mobilevit": "mobilevit_xxs", "mvitv2": "mvitv2_tiny",
    "naflexvit": "naflexvit_base_patch16_parfac_gap", "nasnet": "nasnetalarge", "nest": "nest_tiny",
    "nextvit": "nextvit_small", "nfnet": "test_nfnet", "pit": "pit_ti_224", "pnasnet": "pnasnet5large",
    "pvt_v2": "pvt_v2_b0", "qwen3_vit": "qwen3_vit_88m", "rdnet": "rdnet_tiny", "regnet": "regnetx_002",
    "repghost": "repghostnet_050", "repvit": "repvit_m1", "res2net": "res2next50",
    "resnest": "resnest14d", "resnet": "test_resnet", "resnetv2": "resnetv2_18", "rexnet": "rexnet_100",
    "selecsls": "selecsls42", "senet": "legacy_seresnet18", "sequencer": "sequencer2d_s",
    "shvit": "shvit_s1", "sknet": "skresnet18", "starnet": "starnet_s050", "swiftformer": "swiftformer_xs",
    "swin_transformer": "swin_tiny_patch4_window7_224",
    "swin_transformer_v2": "swinv2_tiny_window16_256", "swin_transformer_v2_cr": "swinv2_cr_tiny_224",
    "tiny_vit": "tiny_vit_5m_224", "tnt": "tnt_s_legacy_patch16_224", "tresnet": "tresnet_m",
    "twins": "twins_svt_small", "vgg": "vgg11", "visformer": "visformer_tiny",
    "vision_transformer": "test_vit", "vision_transformer_hybrid": "vit_tiny_r_s16_p8_224",
    "vision_transformer_relpos": "test_vit_relpos", "vision_transformer_sam": "samvit_base_patch16_224",
    "vitamin": "vitamin_small_224", "volo": "volo_d1_224", "vovnet": "ese_vovnet19b_slim_dw",
    "xception": "legacy_xception", "xception_aligned": "xception41p", "xcit": "xcit_nano_12_p8_224",
}

#: side of the image fed to timm models whose input size is not fixed (their default
#: when smaller, or when the model fails on this one)
TIMM_SIDE = 160
#: input shapes where the default (batch 2, 96 px images; 4 frames of 64 px for video) does not run
SHAPES = {
    "ssd300_vgg16": (2, 3, 300, 300), "ssdlite320_mobilenet_v3_large": (2, 3, 320, 320),
    "s3d": (1, 3, 16, 224, 224),
}


def models(source: str, full: bool = False) -> list[str]:
    """The model names a source contributes; ``full`` takes every timm model, not one per family."""
    if source == "timm":
        import timm
        return timm.list_models() if full else sorted(TIMM_FAMILIES.values())
    if source == "libraries":
        return list(LIBRARIES)
    return torchvision.models.list_models(module=getattr(torchvision.models, source))


def smallest_per_family() -> dict[str, str]:
    """Per timm family, the model with the fewest parameters (built on the meta device)."""
    import timm

    def size(name: str) -> int:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    return {family: min(timm.list_models(module=family), key=lambda n: (size(n), n))
            for family in sorted(timm.list_modules()) if timm.list_models(module=family)}


def _factory(source: str, name: str):
    """A function building the (float32) model."""
    if source == "timm":
        import timm
        return lambda: timm.create_model(name, pretrained=False, num_classes=10)
    if source == "video":
        return lambda: torchvision.models.get_model(name, weights=None)
    if source == "libraries":
        return lambda: LIBRARIES[name]()[0]
    if source == "detection":
        return lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None).backbone
    return lambda: torchvision.models.get_model(name, weights=None, weights_backbone=None)


def _runs(model, x) -> bool:
    try:
        with torch.no_grad():
            model(*_args(x))
        return True
    except Exception:  # noqa: BLE001 - any failure means this input size does not suit the model
        return False


def _args(x) -> tuple:
    """A model's positional inputs: ``x`` itself if a tuple (several inputs), else ``(x,)``."""
    return x if isinstance(x, tuple) else (x,)


def _shapes(x) -> list:
    """The input's shape, or each input's where there are several."""
    return [list(v.shape) for v in x] if isinstance(x, tuple) else list(x.shape)


def _batch(x) -> int:
    """The batch size: the first input's first axis."""
    return _args(x)[0].shape[0]


def _first(x):
    """The first sample of the batch: every input whose first axis is the batch size sliced."""
    if not isinstance(x, tuple):
        return x[:1]
    n = _batch(x)
    return tuple(v[:1] if v.dim() and v.shape[0] == n else v for v in x)


def build(source: str, name: str, device: str = "cpu") -> tuple[torch.nn.Module, torch.Tensor | tuple]:
    """The model in float64 and eval mode with random BatchNorm statistics, and its input
    (a tuple of positional inputs for a ``libraries`` model, floating ones in float64)."""
    torch.manual_seed(0)
    if source == "libraries":
        model, x = LIBRARIES[name]()
        model = model.double().eval()
        randomise_norms(model)
        return model.to(device), tuple((v.double() if v.is_floating_point() else v).to(device) for v in x)
    model = _factory(source, name)().double().eval()
    randomise_norms(model)
    model.to(device)
    g = torch.Generator().manual_seed(0)
    if source == "timm":
        cfg = model.pretrained_cfg
        c, h, w = cfg["input_size"]
        shapes = [(2, c, h, w)]
        if not cfg.get("fixed_input_size", False) and min(h, w) > TIMM_SIDE:
            shapes.insert(0, (2, c, TIMM_SIDE, TIMM_SIDE))
    else:
        shapes = [SHAPES.get(name, (2, 3, 4, 64, 64) if source == "video" else (2, 3, 96, 96))]
    xs = [torch.randn(s, generator=g, dtype=torch.float64).to(device) for s in shapes]
    return model, next((x for x in xs[:-1] if _runs(model, x)), xs[-1])


def _leaves(y) -> list:
    """The tensors of a model's output, in order (dicts, lists, tuples, dataclasses such as
    diffusers' and transformers' outputs; None skipped)."""
    if isinstance(y, torch.Tensor):
        return [y]
    if dataclasses.is_dataclass(y) and not isinstance(y, (type, dict)):
        y = [getattr(y, f.name) for f in dataclasses.fields(y)]
    if isinstance(y, dict):
        y = list(y.values())
    if isinstance(y, (list, tuple)):
        return [t for v in y for t in _leaves(v)]
    return []


def difference(y0, y1) -> float:
    """The largest difference between two outputs, relative to each tensor's largest
    magnitude (``inf`` when their structure or shapes differ, ``nan`` if not finite)."""
    a, b = _leaves(y0), _leaves(y1)
    if len(a) != len(b) or any(s.shape != t.shape for s, t in zip(a, b, strict=True)):
        return float("inf")
    tiny = torch.finfo(torch.float64).tiny
    errs = [((s.double() - t.double()).abs().max() / s.double().abs().max().clamp_min(tiny)).item()
            for s, t in zip(a, b, strict=True) if s.numel()]
    return math.nan if any(map(math.isnan, errs)) else max(errs, default=0.0)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _crash(stage: str, err: Exception, record: dict, key: str) -> str:
    """The outcome of a non-fxsurgeon exception; its traceback goes into the record."""
    record.setdefault("tracebacks", {})[key] = "".join(traceback.format_exception(err)[-12:])
    return f"CRASH in {stage}: {type(err).__name__}: {_first_line(err)}"


def _scheme(graph, alive, scheme: str, x, y0, record: dict) -> str:
    """One scheme's outcome: same, refused, CHANGED, WRONG COST or CRASH."""
    stage = "plan"
    try:
        target = None if scheme == "prune" else record["target"]
        plan = make_plan(graph, alive, metric="params", target=target, scheme=scheme)
        if scheme == "prune":
            record["removed"] = int(sum(d.width - len(d.survivors) for d in plan.dims.values()))
        else:
            record.setdefault("grown", {})[scheme] = int(sum(d.added for d in plan.dims.values()))
        stage = "rewrite"
        new = rewrite(graph, plan, rescale=scheme == "ca").module
        stage = "forward"
        with torch.no_grad():
            y1 = new(*_args(x))
    except FxSurgeonError as err:
        return f"refused: {_first_line(err)}"
    except Exception as err:  # noqa: BLE001 - every other exception is a crash to report
        return _crash(stage, err, record, scheme)
    err = difference(y0, y1)
    record.setdefault("differences", {})[scheme] = err
    if not err <= TOLERANCE:
        return f"CHANGED: relative difference {err:.1e}"
    n = sum(p.numel() for name, p in new.named_parameters() if not name.startswith(f"{JUDGES}."))
    if n != plan.predicted:         # gates cost nothing: export folds them away
        return f"WRONG COST: {n} parameters, the plan predicted {plan.predicted:.0f}"
    return "same"


def _analyse(model, x, record: dict, frontend: str = "auto"):
    """The channel graph, with ``traced``, ``frontend`` and ``analysed`` filled in (None if none)."""
    try:
        graph = analyze(model, x, frontend=frontend)
        record.update(traced=True, frontend=graph.frontend)
    except UntraceableModelError as err:
        record.update(traced=False, untraceable=_first_line(err))
        return None
    except FxSurgeonError as err:
        record.update(traced=True, analysed=f"refused: {_first_line(err)}")
        return None
    except Exception as err:  # noqa: BLE001
        record.update(traced=True, analysed=_crash("analyze", err, record, "analyze"))
        return None
    counted, actual = graph.count("params"), sum(p.numel() for p in model.parameters())
    record["analysed"] = "exact" if counted == actual else \
        f"WRONG COUNT: counted {counted:.0f}, the model has {actual}"
    return graph


def check(source: str, name: str, max_params: int = MAX_PARAMS, device: str = "cpu",
          frontend: str = "auto", draws: int = 1) -> dict:
    """Analyse one model and run every scheme on it; the record says what happened.

    Keys: ``model``, ``source``, ``params``, ``input`` (its shape, or each input's),
    ``seconds``; ``skipped`` (why:
    too big, or in :data:`SKIP`); ``traced`` (True or False) and ``untraceable`` (the
    tracer's message); ``frontend`` (``fx`` or ``export``: which one traced it, as
    ``analyze(frontend=frontend)`` chose); ``target`` (the growing schemes' budget: 1.0, or :data:`GROWTH`
    where nothing died); ``analysed`` (``exact``, ``WRONG
    COUNT: ...``, ``refused: ...`` or ``CRASH ...``); ``free`` (channels in free
    dimensions), ``judged`` (of those, the ones liveliness can judge: a BatchNorm γ
    follows every writer), ``dead`` (the ones zeroed γ killed), ``removed`` (channels
    the ``prune`` plan removes), ``grown`` (channels each growing scheme's plan adds);
    per scheme its outcome (``same``, ``refused: ...``, ``CHANGED: ...``, ``WRONG COST:
    ...``, ``CRASH in <stage>: ...``); ``gated``, ``unjudged`` and ``gates`` (see
    :func:`_gated`); ``differences`` (per scheme that ran, the
    relative difference of the outputs); ``tracebacks`` of the crashes. ``draws`` dead
    sets are drawn (seeds 0, 1, ...; the second on one image, analysed again): a scheme is
    ``same`` only when it is for every draw, else its worst outcome, with the draw
    (``(draw 1, one image)``); the counts and differences are the first draw's.
    """
    start = time.perf_counter()
    record = {"model": name, "source": source, "draws": draws}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check(source, name, max_params, device, record, frontend, draws)
    finally:
        record["seconds"] = round(time.perf_counter() - start, 1)
    return record


#: outcomes from the worst: a scheme's outcome over several draws is its worst one
WORST = ("CRASH", "CHANGED", "WRONG COST", "refused", "same")


def worse(a: str, b: str) -> str:
    """The worse of two outcomes (the first of equals)."""
    rank = (lambda o: next(i for i, w in enumerate(WORST) if o.startswith(w)))
    return b if rank(b) < rank(a) else a


def _check(source: str, name: str, max_params: int, device: str, record: dict, frontend: str,
           draws: int = 1) -> None:
    with torch.device("cpu" if source == "libraries" else "meta"):   # libraries: tiny, built as they are
        record["params"] = sum(p.numel() for p in _factory(source, name)().parameters())
    if record["params"] > max_params:
        record["skipped"] = f"{record['params'] / 1e6:.0f}M parameters, over {max_params / 1e6:.0f}M"
    if name in SKIP:
        record["skipped"] = SKIP[name]
    if "skipped" in record:
        return
    model, x = build(source, name, device)
    record["input"] = _shapes(x)
    graph = _analyse(model, x, record, frontend)
    if graph is None:
        return
    state = {k: v.clone() for k, v in graph.module.state_dict().items()}   # every draw starts from it
    kill(graph, 0.3)
    alive = liveliness(graph)
    record["free"] = sum(d.width for d in graph.free_dims)
    record["judged"] = sum(d.width for d in graph.free_dims if d.scaled)
    record["dead"] = int(sum((~a).sum() for a in alive.values()))
    # with nothing dead, the growing schemes grow anyway: half again the parameters
    record["target"] = 1.0 if record["dead"] else GROWTH
    with torch.no_grad():
        y0 = model(*_args(x))
    for scheme in SCHEMES:
        record[scheme] = _scheme(graph, alive, scheme, x, y0, record)
    _gated(graph, x, record)
    for draw in range(1, draws):
        graph.module.load_state_dict(state)
        # the second draw is of one image: identities that vary along the channel axis alone
        # (an outer product of one timestep) show only there
        xd = _first(x) if draw == 1 and _batch(x) > 1 else x
        g = graph if xd is x else _analyse(model, xd, {}, frontend)
        if g is None:
            continue
        kill(g, 0.3, seed=draw)
        alive = liveliness(g)
        dead = int(sum((~a).sum() for a in alive.values()))
        with torch.no_grad():
            y0 = model(*_args(xd))
        for scheme in SCHEMES:
            outcome = _scheme(g, alive, scheme, xd, y0, {"target": 1.0 if dead else GROWTH})
            which = f"draw {draw}, one image" if xd is not x else f"draw {draw}"
            noted = outcome if outcome == "same" else f"{outcome} ({which})"
            record[scheme] = worse(record[scheme], noted)


def _gated(graph, x, record: dict) -> None:
    """Judges where no norm judges: ``gated`` (the free channels judged once gates are in),
    ``unjudged`` (why the rest are not), ``gates`` (nr's outcome on the gated network with
    30 % of every judge zeroed)."""
    try:
        judged = add_judges(graph)
    except Exception as err:  # noqa: BLE001
        record["gates"] = _crash("add_judges", err, record, "gates")
        return
    record["gated"] = sum(d.width for d in judged.graph.free_dims if d.scaled and d.sources)
    record["unjudged"] = judged.unjudged
    if not judged.gates:
        return
    kill(judged.graph, 0.3, seed=1)
    alive = liveliness(judged.graph)
    with torch.no_grad():
        y0 = judged.graph.module(*_args(x))
    record["gates"] = _scheme(judged.graph, alive, "nr", x, y0, {"target": record["target"]})
