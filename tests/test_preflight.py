"""Plan-time checks that need the model registry and the data root: exit 2 with one line naming the file
and field, before Ray starts and before anything is written."""
import re
import shutil

import pytest

from support.dataset_files import write_cifar10, write_cifar10_c
from raystudy.run import main

BASE = """
name: pf
storage: {tmp}/runs
blocks:
  - name: b
    family: {family}
    task: {task}
    model: {model}
    lr: 0.1
    epochs: 1
"""


def _study(write_study, family="images", task="digits", model="mlp", extra=""):
    return write_study(BASE.format(tmp="{tmp}", family=family, task=task, model=model) + extra)


@pytest.mark.parametrize("family, task, model, extra, field, words", [
    ("images", "digits", "vgg19_bn_cifar", "", "blocks[0].model", "needs H, W >= 32"),
    ("circles", "circles", "cnn_bn", "    factor: 0.5\n", "blocks[0].model", "needs image inputs"),
    ("images", "digits", "cnn_bn", "    model_args: {widht: 3}\n", "blocks[0].model_args", "no argument 'widht'"),
    ("images", "digits", "mlp", "    model_args: {hidden: [1]}\n    metrics: [hessian]\n    hessian: {top_k: 50}\n",
     "blocks[0].hessian.top_k", "parameter count of mlp (85)"),
    ("images", "cifar10", "resnet18_cifar", "    data_root: {tmp}/nodata\n", "blocks[0].data_root",
     "fetch cifar10 --root"),
], ids=["vgg-on-digits", "cnn-on-points", "unknown-model-arg", "top-k-too-large", "missing-dataset"])
def test_bad_study_exits_2_before_anything_starts(write_study, tmp_path, capsys, family, task, model, extra,
                                                  field, words):
    path = _study(write_study, family, task, model, extra)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{path}: {field}: ") and words in err
    assert not (tmp_path / "runs").exists()


def test_corruption_metric_needs_the_c_release(write_study, tmp_path, capsys):
    write_cifar10(tmp_path / "data", n_train=50, n_test=20)
    extra = f"    data_root: {tmp_path}/data\n    metrics: [corruption]\n"
    path = _study(write_study, task="cifar10", model="mlp", extra=extra)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{path}: blocks[0].metrics: corruption: ") and "CIFAR-10-C" in err


def test_a_study_that_fits_passes_preflight(write_study, tmp_path):
    """Every check passes (the model fits the task and the node, the dataset and its -C release are there, top_k
    fits), so nothing is missing; and the pass is not vacuous: without the -C release the same study is refused,
    or, for --dry-run, lists that release to fetch."""
    from raystudy.study.preflight import preflight
    from raystudy.study import StudyError, load_study
    data = write_cifar10(tmp_path / "data", n_train=50, n_test=20)
    c_release = write_cifar10_c(tmp_path / "data", data["x_test"], data["y_test"])
    extra = (f"    data_root: {tmp_path}/data\n    metrics: [corruption, consistency, hessian]\n"
             "    hessian: {top_k: 3}\n")
    path = _study(write_study, task="cifar10", model="resnet18_cifar", extra=extra)
    study, missing = load_study(path), []
    assert preflight(study, path, missing=missing) is None and missing == []
    shutil.rmtree(c_release)
    with pytest.raises(StudyError, match=rf"^{re.escape(str(path))}: blocks\[0\]\.metrics: corruption: .*CIFAR-10-C"):
        preflight(study, path)
    preflight(study, path, missing=missing)
    assert missing == ["cifar10-c"]


def test_a_logger_whose_package_is_missing_is_refused(write_study, tmp_path, capsys):
    import importlib.util
    path = write_study(BASE.format(tmp="{tmp}", family="images", task="digits", model="mlp")
                       + "loggers: [tensorboard]\n")
    from raystudy.study.preflight import preflight
    from raystudy.study import load_study
    preflight(load_study(path), path)  # tensorboardX is installed with Ray Tune
    if importlib.util.find_spec("mlflow") is None:
        assert main([str(path), "--logger", "mlflow"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"{path}: loggers: mlflow needs the mlflow package, which is not installed (install the mlflow extra: uv sync --frozen --extra mlflow)"


def test_corruption_metric_on_digits_passes_and_on_circles_is_refused(write_study, tmp_path, capsys, monkeypatch):
    """digits has a generated corruption set (digits-c, no files); circles has none, refused at load time."""
    from raystudy.study.preflight import preflight
    from raystudy.study import load_study
    monkeypatch.setenv("RAYSTUDY_DATA", str(tmp_path / "nodata"))  # a data root with nothing in it
    path = _study(write_study, extra="    metrics: [corruption, consistency]\n")
    preflight(load_study(path), path)
    path = _study(write_study, family="circles", task="circles", extra="    factor: 0.5\n    metrics: [corruption]\n")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{path}: blocks[0].metrics: corruption needs an images task with a corruption set, not 'circles'"
    assert not (tmp_path / "runs").exists()


def test_the_metric_checks_come_from_the_registry(write_study, tmp_path):
    """preflight runs each listed metric's own ``check`` (hessian and corruption declare one): called directly,
    they name the field and, for a release not yet downloaded, the release."""
    from raystudy.metrics import get_metric
    from raystudy.study import load_study
    assert [m for m in ("hessian", "corruption", "sam_sharpness", "ece") if get_metric(m).check] == ["hessian",
                                                                                                    "corruption"]
    extra = f"    data_root: {tmp_path}/nodata\n    metrics: [hessian, corruption]\n    hessian: {{top_k: 5}}\n"
    block = load_study(_study(write_study, task="cifar10", model="mlp", extra=extra)).blocks[0]
    top_k = get_metric("hessian").check(block, "cifar10", "mlp", 9)
    assert (top_k.field, top_k.release) == ("hessian.top_k", None) and "parameter count of mlp (9)" in top_k.message
    assert get_metric("hessian").check(block, "cifar10", "mlp", 10) is None
    c = get_metric("corruption").check(block, "cifar10", "mlp", 10)
    assert (c.field, c.release) == ("metrics", "cifar10-c") and c.message.startswith("corruption: ")
    assert get_metric("corruption").check(block, "digits", "mlp", 10) is None  # digits-c is generated
