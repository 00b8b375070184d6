"""The example model zoo, built locally with no downloads: `infaas zoo build`.

Examples for a deployment to serve, not part of it: no worker and no key
service imports this package, so editing it changes neither one's measurement.
The first start of `infaas serve`, `infaas profile`, the tests and the benches
use it through the names below.

=============  ===============================================================
module         concept
=============  ===============================================================
``manifest``   the tasks, the manifest and its entries, the loaders of a built
               zoo's files
``graph``      the tiny ONNX graph builder every zoo network is written with
``digits``     scikit-learn classifiers on the bundled 8x8 digits (accuracy
               measured on a held-out split)
``images``     ResNet-style CNNs from seeded weights (accuracy declared) and
               their synthetic image sets
``build``      `build_zoo`: every model, its files and the manifest
``command``    the ``infaas zoo build`` subcommand
=============  ===============================================================
"""

from infaas.zoo.build import build_zoo as build_zoo
from infaas.zoo.graph import IR_VERSION as IR_VERSION
from infaas.zoo.graph import OPSET as OPSET
from infaas.zoo.images import TORCHVISION_TOP1 as TORCHVISION_TOP1
from infaas.zoo.manifest import Manifest as Manifest
from infaas.zoo.manifest import ZooEntry as ZooEntry
from infaas.zoo.manifest import load_calibration as load_calibration
from infaas.zoo.manifest import load_manifest as load_manifest
from infaas.zoo.manifest import load_model_bytes as load_model_bytes
from infaas.zoo.manifest import load_validation as load_validation
from infaas.zoo.manifest import tasks as tasks

__all__ = [
    "IR_VERSION",
    "OPSET",
    "TORCHVISION_TOP1",
    "Manifest",
    "ZooEntry",
    "build_zoo",
    "load_calibration",
    "load_manifest",
    "load_model_bytes",
    "load_validation",
    "tasks",
]
