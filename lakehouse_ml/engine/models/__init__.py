"""The model families of the local BigQuery ML engine (:mod:`base`: the interface and the
registry): :mod:`glm` (LINEAR_REG, LOGISTIC_REG), :mod:`kmeans` (KMEANS) and :mod:`tree`
(BOOSTED_TREE_*, RANDOM_FOREST_* through :mod:`lakehouse_ml.engine.xgb`). Importing this package
registers them."""

from lakehouse_ml.engine.models import base, glm, kmeans, tree

__all__ = ["base", "glm", "kmeans", "tree"]
