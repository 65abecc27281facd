"""The models zoo: what each model needs for export. Family modules register themselves on import."""
from models_zoo.errors import UnknownModelError, WeightsError
from models_zoo.precision import PRECISIONS, Precision
from models_zoo.spec import (InputSpec, ModelSpec, Tolerance, family_representatives, get_model, list_models,
                             register_model)
from models_zoo import bert, deit, distilbert, efficientformer, minilm, mobilevit, tinyvit  # noqa: F401  (registration)
from models_zoo import dynamicvit, minivit, mobileformer  # noqa: F401  (registration: written from the papers)
from models_zoo import user_models  # noqa: F401, E402  (registers the model-folder resolver)

__all__ = ["PRECISIONS", "Precision", "InputSpec", "ModelSpec", "Tolerance", "UnknownModelError", "WeightsError", "family_representatives", "get_model",
           "list_models", "register_model"]
