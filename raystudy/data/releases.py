"""Where each dataset release is published and the checksum its publishers give for it.

Checksums are MD5 of the archive, as the dataset authors publish them (Zenodo lists an MD5 for
every file of a record) and as torchvision / robustbench / avalanche pin them in their loaders.
Where no pinned value could be sourced, ``md5`` is None and ``fetch`` reads the MD5 that Zenodo
publishes for the file from the record's API (``zenodo_record``), as robustbench's
``zenodo_download`` does; the download is verified either way.
"""
from __future__ import annotations

from dataclasses import dataclass

ZENODO_API = "https://zenodo.org/api/records/"


@dataclass(frozen=True)
class Release:
    """One downloadable archive: ``url``, its ``filename``, the ``folder`` it extracts to under
    the data root, its published ``md5`` (or the Zenodo record that publishes it) and ``source``
    (where the URL and checksum come from)."""

    name: str
    url: str
    filename: str
    folder: str
    md5: str | None
    source: str
    zenodo_record: str | None = None
    size: int | None = None  # bytes, where published; only used for the progress display


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        # torchvision.datasets.CIFAR10: url, filename and tgz_md5 (Krizhevsky's page lists no
        # checksum; torchvision's pin is the de-facto reference). 170,498,071 bytes.
        Release("cifar10", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "cifar-10-python.tar.gz", "cifar-10-batches-py", "c58f30108f718f92721af3b95e74349a",
                "torchvision/datasets/cifar.py (CIFAR10.tgz_md5)", size=170_498_071),
        # torchvision.datasets.CIFAR100. 169,001,437 bytes.
        Release("cifar100", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "cifar-100-python.tar.gz", "cifar-100-python", "eb9058c3a382ffc7106e4002c42a8d85",
                "torchvision/datasets/cifar.py (CIFAR100.tgz_md5)", size=169_001_437),
        # Stanford CS231n's release; md5 as pinned by avalanche's TinyImagenet dataset and other
        # loaders (cs231n publishes none). 248,100,043 bytes.
        Release("tinyimagenet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                "tiny-imagenet-200.zip", "tiny-imagenet-200", "90528d7ca1a48142e341f4ef8d21d0de",
                "avalanche benchmarks/datasets/tiny_imagenet (md5); cs231n.stanford.edu", size=248_100_043),
        # Hendrycks & Dietterich, Zenodo record 2535967 (v1, CC BY 4.0); md5 as listed on the record
        # and pinned by robustbench-style loaders. 2,918,471,680 bytes.
        Release("cifar10-c", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar?download=1",
                "CIFAR-10-C.tar", "CIFAR-10-C", "56bf5dcef84df0e2308c6dcbcbbd8499",
                "Zenodo record 2535967 (robustbench ZENODO_CORRUPTIONS_LINKS)", "2535967", 2_918_471_680),
        # Zenodo record 3555552; md5 as listed on the record (pinned e.g. by torch-uncertainty).
        Release("cifar100-c", "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar?download=1",
                "CIFAR-100-C.tar", "CIFAR-100-C", "11f0ed0f1191edbf9fa23466ae6021d3",
                "Zenodo record 3555552 (robustbench ZENODO_CORRUPTIONS_LINKS)", "3555552"),
        # Hendrycks' Zenodo record 2536630 (the robustness repository's Tiny ImageNet-C link). No
        # loader we found pins its md5, so fetch reads the one Zenodo publishes for the file.
        Release("tinyimagenet-c", "https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar?download=1",
                "Tiny-ImageNet-C.tar", "Tiny-ImageNet-C", None,
                "Zenodo record 2536630 (md5 from the Zenodo records API at fetch time)", "2536630"),
    )
}
