"""The registry's pyfunc model, logged as code (MLflow's "models from code").

MLflow stores this file with the model instead of a pickled Python object, and the policy itself is
plain weights (see :mod:`harness.checkpoints`), so loading a registered model unpickles nothing.
"""

import mlflow

from harness.registry import SB3Policy

mlflow.models.set_model(SB3Policy())
