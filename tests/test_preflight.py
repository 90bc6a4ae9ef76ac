"""Plan-time checks that need the model registry and the data root: exit 2 with one line naming the file
and field, before Ray starts and before anything is written."""
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
    from raystudy.study.preflight import preflight
    from raystudy.study import load_study
    data = write_cifar10(tmp_path / "data", n_train=50, n_test=20)
    write_cifar10_c(tmp_path / "data", data["x_test"], data["y_test"])
    extra = f"    data_root: {tmp_path}/data\n    metrics: [corruption, consistency, hessian]\n"
    path = _study(write_study, task="cifar10", model="resnet18_cifar", extra=extra)
    preflight(load_study(path), path)


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
