"""The XGBoost layer for BigQuery ML's tree models (lakehouse_ml/engine/xgb.py)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost
from sklearn.metrics import log_loss, r2_score, roc_auc_score

from lakehouse_ml.engine import xgb

BT_C, BT_R = "BOOSTED_TREE_CLASSIFIER", "BOOSTED_TREE_REGRESSOR"
RF_C, RF_R = "RANDOM_FOREST_CLASSIFIER", "RANDOM_FOREST_REGRESSOR"


# -- synthetic data -----------------------------------------------------------------------------
def _features(n: int, seed: int, n_features: int = 6, nan_rate: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    X[:, 3] = rng.integers(0, 5, n)  # a label-encoded categorical column
    X[rng.random(X.shape) < nan_rate] = np.nan
    return X


def _signal(X: np.ndarray) -> np.ndarray:
    Z = np.nan_to_num(X)
    return 2.0 * Z[:, 0] - 1.5 * Z[:, 1] + np.where(Z[:, 3] == 2, 1.5, 0.0) + np.sin(2 * Z[:, 2])


def binary_data(n: int = 3000, seed: int = 0):
    X = _features(n, seed)
    y = (_signal(X) + np.random.default_rng(seed + 100).normal(0, 0.5, n) > 0).astype(np.float64)
    return X, y


def regression_data(n: int = 3000, seed: int = 0):
    X = _features(n, seed)
    return X, _signal(X) + np.random.default_rng(seed + 100).normal(0, 0.3, n)


def multiclass_data(n: int = 3000, seed: int = 0):
    X = _features(n, seed)
    s = _signal(X)
    return X, np.digitize(s, [-1.0, 1.0]).astype(np.float64)  # 3 classes


def split(X, y, n_eval: int = 600):
    return X[:-n_eval], y[:-n_eval], X[-n_eval:], y[-n_eval:]


# -- the defaults table ------------------------------------------------------------------------
BOOSTED_OPTIONS = {
    "booster_type",
    "dart_normalize_type",
    "dropout",
    "num_parallel_tree",
    "max_tree_depth",
    "tree_method",
    "min_tree_child_weight",
    "min_split_loss",
    "l1_reg",
    "l2_reg",
    "learn_rate",
    "subsample",
    "colsample_bytree",
    "colsample_bylevel",
    "colsample_bynode",
    "max_iterations",
    "early_stop",
    "min_rel_progress",
    "instance_weight_col",
    "enable_global_explain",
    "approx_global_feature_contrib",
    "category_encoding_method",
    "xgboost_version",
    "input_label_cols",
    "data_split_method",
    "data_split_eval_fraction",
    "data_split_test_fraction",
    "data_split_col",
    "num_trials",
    "max_parallel_trials",
    "hparam_tuning_algorithm",
    "hparam_tuning_objectives",
    "kms_key_name",
}
FOREST_ONLY_ABSENT = {
    "booster_type",
    "dart_normalize_type",
    "dropout",
    "learn_rate",
    "max_iterations",
    "category_encoding_method",
}


def test_defaults_table_has_the_documented_option_names():
    assert set(xgb.OPTION_DEFAULTS) == set(xgb.TREE_MODEL_TYPES)
    class_weights = {"auto_class_weights", "class_weights"}
    assert set(xgb.OPTION_DEFAULTS[BT_C]) == BOOSTED_OPTIONS | class_weights
    assert set(xgb.OPTION_DEFAULTS[BT_R]) == BOOSTED_OPTIONS
    assert set(xgb.OPTION_DEFAULTS[RF_C]) == (BOOSTED_OPTIONS - FOREST_ONLY_ABSENT) | class_weights
    assert set(xgb.OPTION_DEFAULTS[RF_R]) == BOOSTED_OPTIONS - FOREST_ONLY_ABSENT
    for model_type, defaults in xgb.OPTION_DEFAULTS.items():
        assert all(name == name.lower() for name in defaults)
        assert set(xgb.OPTION_SOURCES[model_type]) == set(defaults)
        page = xgb.RANDOM_FOREST_DOC if model_type.startswith("RANDOM_FOREST") else xgb.BOOSTED_TREE_DOC
        assert all(url.startswith(page + "#") for url in xgb.OPTION_SOURCES[model_type].values())


def test_documented_default_values():
    bt = xgb.OPTION_DEFAULTS[BT_C]
    assert (bt["booster_type"], bt["dart_normalize_type"], bt["tree_method"]) == ("GBTREE", "TREE", "AUTO")
    assert (bt["num_parallel_tree"], bt["max_tree_depth"], bt["max_iterations"]) == (1, 6, 20)
    assert (bt["learn_rate"], bt["l1_reg"], bt["l2_reg"], bt["min_split_loss"]) == (0.3, 0.0, 1.0, 0.0)
    assert (bt["subsample"], bt["colsample_bytree"], bt["colsample_bylevel"], bt["colsample_bynode"]) == (
        1.0,
    ) * 4
    assert (bt["min_tree_child_weight"], bt["dropout"]) == (1, 0.0)
    assert (bt["early_stop"], bt["min_rel_progress"]) == (True, 0.01)
    assert (bt["auto_class_weights"], bt["class_weights"], bt["enable_global_explain"]) == (
        False,
        None,
        False,
    )
    assert bt["hparam_tuning_objectives"] == ["ROC_AUC"]
    assert xgb.OPTION_DEFAULTS[BT_R]["hparam_tuning_objectives"] == ["R2_SCORE"]
    rf = xgb.OPTION_DEFAULTS[RF_R]
    assert (rf["num_parallel_tree"], rf["max_tree_depth"]) == (100, 15)
    assert (rf["subsample"], rf["colsample_bynode"], rf["colsample_bytree"], rf["colsample_bylevel"]) == (
        0.8,
        0.8,
        1.0,
        1.0,
    )
    assert (rf["early_stop"], rf["min_rel_progress"], rf["l2_reg"], rf["tree_method"]) == (
        True,
        0.01,
        1.0,
        "AUTO",
    )


def test_defaults_are_not_shared_mutable_state():
    opts = xgb.resolved_options(BT_C, {})
    opts["input_label_cols"].append("other")
    assert xgb.OPTION_DEFAULTS[BT_C]["input_label_cols"] == ["label"]


# -- options -> XGBoost parameters ----------------------------------------------------------------
def test_params_boosted_tree_defaults():
    params, rounds = xgb.xgboost_params(BT_C, {}, 2)
    assert rounds == 20
    assert params["objective"] == "binary:logistic"
    assert params["booster"] == "gbtree"
    assert params["tree_method"] == "hist"  # AUTO: "Faster histogram optimized approximate greedy algorithm"
    assert (params["eta"], params["max_depth"], params["num_parallel_tree"]) == (0.3, 6, 1)
    assert (params["alpha"], params["lambda"], params["gamma"], params["min_child_weight"]) == (
        0.0,
        1.0,
        0.0,
        1.0,
    )
    assert params["subsample"] == params["colsample_bynode"] == 1.0
    assert params["seed"] == xgb.SEED and params["nthread"] >= 1

    params, _ = xgb.xgboost_params(BT_C, {}, 4)
    assert (params["objective"], params["num_class"]) == ("multi:softprob", 4)
    params, _ = xgb.xgboost_params(BT_R, {}, None)
    assert params["objective"] == "reg:squarederror" and "num_class" not in params


def test_params_option_mapping():
    options = {
        "booster_type": "dart",
        "dart_normalize_type": "FOREST",
        "dropout": 0.2,
        "num_parallel_tree": 3,
        "max_tree_depth": 4,
        "tree_method": "APPROX",
        "min_tree_child_weight": 5,
        "min_split_loss": 0.5,
        "l1_reg": 0.1,
        "l2_reg": 2.0,
        "learn_rate": 0.05,
        "subsample": 0.7,
        "colsample_bytree": 0.9,
        "colsample_bylevel": 0.8,
        "colsample_bynode": 0.6,
        "max_iterations": 7,
    }
    params, rounds = xgb.xgboost_params(BT_R, options, None)
    assert rounds == 7
    expected = {
        "booster": "dart",
        "normalize_type": "forest",
        "rate_drop": 0.2,
        "num_parallel_tree": 3,
        "max_depth": 4,
        "tree_method": "approx",
        "min_child_weight": 5.0,
        "gamma": 0.5,
        "alpha": 0.1,
        "lambda": 2.0,
        "eta": 0.05,
        "subsample": 0.7,
        "colsample_bytree": 0.9,
        "colsample_bylevel": 0.8,
        "colsample_bynode": 0.6,
    }
    assert {k: params[k] for k in expected} == expected
    assert xgb.xgboost_params(BT_R, {"tree_method": "exact"}, None)[0]["tree_method"] == "exact"
    assert xgb.xgboost_params(BT_R, {"tree_method": "HIST"}, None)[0]["tree_method"] == "hist"


@pytest.mark.parametrize(
    "model_type,n_classes,objective", [(RF_C, 2, "binary:logistic"), (RF_R, None, "reg:squarederror")]
)
def test_params_random_forest_is_one_round_of_parallel_trees(model_type, n_classes, objective):
    params, rounds = xgb.xgboost_params(model_type, {}, n_classes)
    assert rounds == 1
    assert params["objective"] == objective
    assert (params["num_parallel_tree"], params["eta"], params["max_depth"]) == (100, 1.0, 15)
    assert (params["subsample"], params["colsample_bynode"], params["colsample_bytree"]) == (0.8, 0.8, 1.0)
    assert params["booster"] == "gbtree"
    params, rounds = xgb.xgboost_params(model_type, {"num_parallel_tree": 7, "subsample": 0.5}, n_classes)
    assert (rounds, params["num_parallel_tree"], params["subsample"]) == (1, 7, 0.5)


# -- bad options ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_type,options,named,allowed",
    [
        (BT_C, {"booster_type": "LINEAR"}, "BOOSTER_TYPE", "'GBTREE', 'DART'"),
        (BT_C, {"tree_method": "gpu_hist"}, "TREE_METHOD", "'AUTO', 'EXACT', 'APPROX', 'HIST'"),
        (BT_C, {"dart_normalize_type": "x"}, "DART_NORMALIZE_TYPE", "'TREE', 'FOREST'"),
        (BT_C, {"subsample": 1.5}, "SUBSAMPLE", "(0.0, 1.0]"),
        (BT_C, {"subsample": 0}, "SUBSAMPLE", "(0.0, 1.0]"),
        (RF_C, {"subsample": 1.0}, "SUBSAMPLE", "(0.0, 1.0)"),
        (BT_C, {"colsample_bynode": -0.1}, "COLSAMPLE_BYNODE", "(0.0, 1.0]"),
        (BT_C, {"learn_rate": 0}, "LEARN_RATE", "(0.0, inf]"),
        (BT_C, {"max_iterations": 0}, "MAX_ITERATIONS", "INT64 >= 1"),
        (BT_C, {"max_tree_depth": 2.5}, "MAX_TREE_DEPTH", "INT64 >= 1"),
        (RF_R, {"num_parallel_tree": 1}, "NUM_PARALLEL_TREE", "INT64 >= 2"),
        (BT_R, {"l2_reg": -1.0}, "L2_REG", "[0.0, inf]"),
        (BT_R, {"early_stop": "yes"}, "EARLY_STOP", "TRUE or FALSE"),
        (BT_R, {"dropout": 2}, "DROPOUT", "[0.0, 1.0]"),
        (BT_R, {"xgboost_version": "2.0"}, "XGBOOST_VERSION", "'0.9', '1.1'"),
        (RF_C, {"learn_rate": 0.1}, "LEARN_RATE", "NUM_PARALLEL_TREE"),
        (RF_C, {"max_iterations": 5}, "MAX_ITERATIONS", "SUBSAMPLE"),
        (BT_R, {"auto_class_weights": True}, "AUTO_CLASS_WEIGHTS", "MAX_ITERATIONS"),
        (BT_C, {"max_depth": 3}, "MAX_DEPTH", "MAX_TREE_DEPTH"),
        (RF_C, {"tree_method": "EXACT"}, "COLSAMPLE_BYNODE", "1.0"),
        (
            BT_C,
            {"auto_class_weights": True, "class_weights": {"0": 1.0, "1": 2.0}},
            "CLASS_WEIGHTS",
            "AUTO_CLASS_WEIGHTS",
        ),
    ],
)
def test_bad_options_raise_value_error_naming_them(model_type, options, named, allowed):
    with pytest.raises(ValueError) as err:
        xgb.xgboost_params(model_type, options, 2 if "CLASSIFIER" in model_type else None)
    assert named in str(err.value)
    assert allowed in str(err.value)


def test_bad_model_type_and_class_counts():
    with pytest.raises(ValueError, match="LINEAR_REG.*BOOSTED_TREE_CLASSIFIER"):
        xgb.xgboost_params("LINEAR_REG", {}, None)
    with pytest.raises(ValueError, match="at least 2 classes"):
        xgb.xgboost_params(BT_C, {}, 1)
    X, _ = binary_data(200)
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        xgb.train(BT_C, {}, X, np.zeros(len(X)), n_classes=2)


def test_registry_options_and_off_class_weights_pass_through():
    options = {
        "model_registry": "VERTEX_AI",
        "vertex_ai_model_id": "m",
        "model_type": BT_R,
        "auto_class_weights": False,
        "class_weights": None,
    }
    params, rounds = xgb.xgboost_params(BT_R, options, None)
    assert rounds == 20 and "model_registry" not in params


def test_approx_global_feature_contrib_derived_default():
    assert xgb.resolve_approx_global_feature_contrib(BT_C, {}) is False
    assert xgb.resolve_approx_global_feature_contrib(BT_C, {"enable_global_explain": True}) is False
    assert xgb.resolve_approx_global_feature_contrib(
        BT_C, {"enable_global_explain": True, "num_parallel_tree": 10}
    )
    assert xgb.resolve_approx_global_feature_contrib(RF_C, {"enable_global_explain": True})  # 100 >= 50
    assert not xgb.resolve_approx_global_feature_contrib(
        RF_C, {"enable_global_explain": True, "num_parallel_tree": 49}
    )
    assert not xgb.resolve_approx_global_feature_contrib(
        RF_C, {"enable_global_explain": True, "approx_global_feature_contrib": False}
    )


# -- training: sensible models for each type -------------------------------------------------------
@pytest.mark.parametrize("model_type", [BT_C, RF_C])
def test_classifiers_learn(model_type):
    Xtr, ytr, Xev, yev = split(*binary_data())
    result = xgb.train(model_type, {}, Xtr, ytr, Xev, yev, n_classes=2)
    probs = xgb.predict(xgb.load_booster(result.booster_json), Xev, model_type)
    assert probs.shape == (len(Xev), 2) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert roc_auc_score(yev, probs[:, 1]) > 0.9


@pytest.mark.parametrize("model_type", [BT_R, RF_R])
def test_regressors_learn(model_type):
    Xtr, ytr, Xev, yev = split(*regression_data())
    result = xgb.train(model_type, {}, Xtr, ytr, Xev, yev)
    pred = xgb.predict(xgb.load_booster(result.booster_json), Xev, model_type)
    assert pred.shape == (len(Xev),)
    assert r2_score(yev, pred) > 0.8


def test_multiclass_and_dart_learn():
    Xtr, ytr, Xev, yev = split(*multiclass_data())
    result = xgb.train(BT_C, {"early_stop": False}, Xtr, ytr, Xev, yev, n_classes=3)
    probs = xgb.predict(xgb.load_booster(result.booster_json), Xev, BT_C)
    assert probs.shape == (len(Xev), 3)
    assert (probs.argmax(axis=1) == yev).mean() > 0.8
    Xtr, ytr, Xev, yev = split(*binary_data())
    dart = xgb.train(BT_C, {"booster_type": "DART", "dropout": 0.1, "max_iterations": 10}, Xtr, ytr, Xev, yev)
    assert dart.params["booster"] == "dart"
    assert roc_auc_score(yev, xgb.predict(xgb.load_booster(dart.booster_json), Xev, BT_C)[:, 1]) > 0.9


def test_random_forest_trains_one_round_of_num_parallel_tree_trees():
    Xtr, ytr, Xev, yev = split(*binary_data(1000))
    result = xgb.train(RF_C, {"num_parallel_tree": 12}, Xtr, ytr, Xev, yev)
    assert len(result.iterations) == 1 and result.best_iteration == 0
    assert result.iterations[0]["learning_rate"] == 1.0
    booster = xgb.load_booster(result.booster_json)
    assert len(booster.get_dump()) == 12


def test_training_info_rows_and_losses():
    Xtr, ytr, Xev, yev = split(*regression_data(1500))
    result = xgb.train(BT_R, {"early_stop": False, "max_iterations": 5}, Xtr, ytr, Xev, yev)
    assert [row["iteration"] for row in result.iterations] == list(range(5))
    for row in result.iterations:
        assert set(row) == {"iteration", "loss", "eval_loss", "duration_ms", "learning_rate"}
        assert isinstance(row["duration_ms"], int) and row["duration_ms"] >= 0
        assert row["learning_rate"] == 0.3
    booster = xgb.load_booster(result.booster_json)
    # Regression loss is mean squared error (BigQuery ML's ML.TRAINING_INFO), on both sets.
    mse_train = np.mean((xgb.predict(booster, Xtr, BT_R) - ytr) ** 2)
    mse_eval = np.mean((xgb.predict(booster, Xev, BT_R) - yev) ** 2)
    assert result.iterations[-1]["loss"] == pytest.approx(mse_train, rel=1e-4)
    assert result.iterations[-1]["eval_loss"] == pytest.approx(mse_eval, rel=1e-4)

    Xtr, ytr, _, _ = split(*binary_data(1500))
    result = xgb.train(BT_C, {"early_stop": False, "max_iterations": 3}, Xtr, ytr)
    assert all(row["eval_loss"] is None for row in result.iterations)
    probs = xgb.predict(xgb.load_booster(result.booster_json), Xtr, BT_C)
    assert result.iterations[-1]["loss"] == pytest.approx(log_loss(ytr, probs[:, 1]), rel=1e-4)


def test_progress_callback_gets_one_line_per_iteration():
    Xtr, ytr, Xev, yev = split(*binary_data(800))
    lines: list[str] = []
    result = xgb.train(
        BT_C, {"early_stop": False, "max_iterations": 4}, Xtr, ytr, Xev, yev, progress=lines.append
    )
    assert len(lines) == len(result.iterations) == 4
    assert lines[0].startswith("iteration 1/4: loss=") and "eval_loss=" in lines[0]


# -- early stopping --------------------------------------------------------------------------------
def _relative_improvements(losses):
    return [(a - b) / a for a, b in zip(losses, losses[1:])]


def test_early_stop_stops_after_first_iteration_below_min_rel_progress():
    Xtr, ytr, Xev, yev = split(*binary_data())
    options = {"max_iterations": 50, "min_rel_progress": 0.02}
    result = xgb.train(BT_C, options, Xtr, ytr, Xev, yev)
    assert result.stopped_early and result.early_stop_metric == "eval_loss"
    assert len(result.iterations) < 50
    rel = _relative_improvements([row["eval_loss"] for row in result.iterations])
    assert all(r >= 0.02 for r in rel[:-1]) and rel[-1] < 0.02
    assert result.best_iteration == len(result.iterations) - 1
    booster = xgb.load_booster(result.booster_json)
    assert booster.num_boosted_rounds() == len(result.iterations)  # the last iteration is kept

    full = xgb.train(BT_C, {**options, "early_stop": False}, Xtr, ytr, Xev, yev)
    assert not full.stopped_early and full.early_stop_metric is None
    assert len(full.iterations) == 50
    assert xgb.load_booster(full.booster_json).num_boosted_rounds() == 50


def test_early_stop_watches_training_loss_without_evaluation_rows():
    Xtr, ytr, _, _ = split(*binary_data())
    result = xgb.train(BT_C, {"max_iterations": 50, "min_rel_progress": 0.05}, Xtr, ytr)
    assert result.stopped_early and result.early_stop_metric == "loss"
    rel = _relative_improvements([row["loss"] for row in result.iterations])
    assert all(r >= 0.05 for r in rel[:-1]) and rel[-1] < 0.05


def test_early_stop_on_eval_loss_when_training_loss_still_improves():
    # Pure-noise labels: the training loss keeps falling (memorisation), the eval loss does not.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(2000, 5))
    y = (rng.random(2000) < 0.5).astype(float)
    Xtr, ytr, Xev, yev = split(X, y, 500)
    result = xgb.train(BT_C, {"max_iterations": 30, "min_rel_progress": 0.001}, Xtr, ytr, Xev, yev)
    assert result.stopped_early and len(result.iterations) < 30
    train_rel = _relative_improvements([row["loss"] for row in result.iterations])
    assert train_rel[-1] >= 0.001  # training alone would have continued


# -- class weights ---------------------------------------------------------------------------------
def imbalanced_data(n: int = 4000, seed: int = 3):
    X = _features(n, seed, nan_rate=0.0)
    y = (_signal(X) + np.random.default_rng(seed).normal(0, 1.5, n) > 3.0).astype(float)
    return X, y


def test_class_sample_weights_formulas():
    y = np.array([0, 0, 0, 1, 2, 2], dtype=float)
    w = xgb.class_sample_weights(y, 3, auto_class_weights=True)
    # total_input_rows / (input_rows_for_class_n * number_of_unique_classes)
    np.testing.assert_allclose(w, [6 / 9, 6 / 9, 6 / 9, 6 / 3, 6 / 6, 6 / 6])
    w = xgb.class_sample_weights(
        y, 3, class_weights=[("a", 1.0), ("b", 5.0), ("c", 0.5)], class_labels=["a", "b", "c"]
    )
    np.testing.assert_allclose(w, [1, 1, 1, 5, 0.5, 0.5])
    w = xgb.class_sample_weights(
        y,
        3,
        class_weights=[
            {"label": "0", "weight": 2.0},
            {"label": "1", "weight": 1.0},
            {"label": "2", "weight": 3.0},
        ],
    )
    np.testing.assert_allclose(w, [2, 2, 2, 1, 3, 3])
    assert xgb.class_sample_weights(y, 3) is None
    with pytest.raises(ValueError, match="every class label; missing: c"):
        xgb.class_sample_weights(y, 3, class_weights={"a": 1.0, "b": 1.0}, class_labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="'z', which is not a class label"):
        xgb.class_sample_weights(
            y, 3, class_weights={"a": 1.0, "b": 1.0, "c": 1.0, "z": 1.0}, class_labels=["a", "b", "c"]
        )


@pytest.mark.parametrize("model_type", [BT_C, RF_C])
def test_class_weights_move_predictions_towards_the_upweighted_class(model_type):
    X, y = imbalanced_data()
    assert 0.05 < y.mean() < 0.3
    small = {"num_parallel_tree": 20} if model_type == RF_C else {"early_stop": False, "max_iterations": 10}
    plain = xgb.train(model_type, small, X, y, n_classes=2)
    auto = xgb.train(model_type, {**small, "auto_class_weights": True}, X, y, n_classes=2)
    manual = xgb.train(
        model_type,
        {**small, "class_weights": {"no": 1.0, "yes": 10.0}},
        X,
        y,
        n_classes=2,
        class_labels=["no", "yes"],
    )
    down = xgb.train(
        model_type,
        {**small, "class_weights": {"no": 10.0, "yes": 1.0}},
        X,
        y,
        n_classes=2,
        class_labels=["no", "yes"],
    )

    def mean_p1(result):
        return xgb.predict(xgb.load_booster(result.booster_json), X, model_type)[:, 1].mean()

    assert mean_p1(auto) > mean_p1(plain) + 0.05
    assert mean_p1(manual) > mean_p1(plain) + 0.05
    assert mean_p1(down) < mean_p1(plain)


def test_instance_weights_cannot_be_combined_with_class_weights():
    X, y = imbalanced_data(500)
    with pytest.raises(ValueError, match="INSTANCE_WEIGHT_COL"):
        xgb.train(BT_C, {"auto_class_weights": True}, X, y, sample_weight=np.ones(len(y)))
    result = xgb.train(BT_C, {"max_iterations": 2}, X, y, sample_weight=np.ones(len(y)))
    assert len(result.iterations) == 2


# -- determinism and the JSON artifact --------------------------------------------------------------
@pytest.mark.parametrize(
    "model_type,data,options",
    [
        (BT_C, binary_data, {"subsample": 0.7, "colsample_bynode": 0.7}),
        (BT_C, multiclass_data, {"max_iterations": 5}),
        (BT_R, regression_data, {"booster_type": "DART", "dropout": 0.2, "max_iterations": 8}),
        (RF_C, binary_data, {"num_parallel_tree": 10}),
        (RF_R, regression_data, {"num_parallel_tree": 10}),
    ],
)
def test_json_round_trip_is_bit_identical_and_training_is_deterministic(model_type, data, options):
    X, y = data(1500, seed=11)
    Xtr, ytr, Xev, yev = split(X, y, 300)
    first = xgb.train(
        model_type, options, Xtr, ytr, Xev, yev, feature_names=[f"f_{i}" for i in range(X.shape[1])]
    )
    assert first.booster_json.startswith(b"{")
    loaded = xgb.load_booster(first.booster_json)
    assert np.array_equal(xgb.predict(first.booster, Xev, model_type), xgb.predict(loaded, Xev, model_type))
    assert np.array_equal(
        xgb.feature_contributions(first.booster, Xev[:50]), xgb.feature_contributions(loaded, Xev[:50])
    )
    assert loaded.feature_names == [f"f_{i}" for i in range(X.shape[1])]
    # Same inputs -> the same bytes, whatever the thread count.
    again = xgb.train(
        model_type,
        options,
        Xtr,
        ytr,
        Xev,
        yev,
        feature_names=[f"f_{i}" for i in range(X.shape[1])],
        nthread=2,
    )
    one_thread = xgb.train(
        model_type,
        options,
        Xtr,
        ytr,
        Xev,
        yev,
        feature_names=[f"f_{i}" for i in range(X.shape[1])],
        nthread=1,
    )
    assert again.booster_json == first.booster_json == one_thread.booster_json
    assert [r["loss"] for r in again.iterations] == [r["loss"] for r in first.iterations]


def test_missing_values_are_accepted_in_training_and_prediction():
    Xtr, ytr, Xev, yev = split(*binary_data(1000))
    booster = xgb.load_booster(xgb.train(BT_C, {"max_iterations": 3}, Xtr, ytr).booster_json)
    all_missing = np.full((3, Xtr.shape[1]), np.nan)
    probs = xgb.predict(booster, all_missing, BT_C)
    assert probs.shape == (3, 2) and np.isfinite(probs).all()
    with pytest.raises(ValueError, match="feature columns"):
        xgb.predict(booster, Xev[:, :3], BT_C)
    with pytest.raises(ValueError, match="infinite"):
        xgb.predict(booster, np.full((1, Xtr.shape[1]), np.inf), BT_C)


# -- explanations -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_type,data,n_classes",
    [(BT_C, binary_data, 2), (BT_R, regression_data, None), (RF_C, binary_data, 2)],
)
def test_contributions_sum_to_the_margin(model_type, data, n_classes):
    X, y = data(1000)
    options = {"num_parallel_tree": 10} if model_type == RF_C else {"max_iterations": 5}
    booster = xgb.load_booster(xgb.train(model_type, options, X, y, n_classes=n_classes).booster_json)
    contribs = xgb.feature_contributions(booster, X[:100])
    assert contribs.shape == (100, X.shape[1] + 1)
    margin = xgb.predict_margin(booster, X[:100])
    np.testing.assert_allclose(contribs.sum(axis=1), margin, atol=1e-4)
    if model_type == BT_C:  # the margin is the log-odds of p1
        p1 = xgb.predict(booster, X[:100], model_type)[:, 1]
        np.testing.assert_allclose(1 / (1 + np.exp(-contribs.sum(axis=1))), p1, atol=1e-5)
    approx = xgb.feature_contributions(booster, X[:100], approximate=True)
    np.testing.assert_allclose(approx.sum(axis=1), margin, atol=1e-4)


def test_multiclass_contributions_shape_and_sum():
    X, y = multiclass_data(1000)
    booster = xgb.load_booster(xgb.train(BT_C, {"max_iterations": 4}, X, y, n_classes=3).booster_json)
    contribs = xgb.feature_contributions(booster, X[:50])
    assert contribs.shape == (50, 3, X.shape[1] + 1)
    np.testing.assert_allclose(contribs.sum(axis=2), xgb.predict_margin(booster, X[:50]), atol=1e-4)


def test_global_importance_covers_every_feature_and_matches_get_score():
    X, y = binary_data(1500)
    X = np.column_stack([X, np.zeros(len(X))])  # a constant column: never used to split
    names = [f"col_{i}" for i in range(X.shape[1])]
    result = xgb.train(BT_C, {"max_iterations": 5}, X, y, feature_names=names)
    booster = xgb.load_booster(result.booster_json)
    importance = xgb.global_importance(booster, names)
    assert list(importance) == names
    assert importance["col_6"] == {"importance_weight": 0.0, "importance_gain": 0.0, "importance_cover": 0.0}
    for kind in ("weight", "gain", "cover"):
        score = booster.get_score(importance_type=kind)
        assert score, kind
        for name, value in score.items():
            assert importance[name][f"importance_{kind}"] == pytest.approx(value)
    # importance_weight: number of splits using the feature, across all trees.
    splits = sum(dump.count("[col_0<") for dump in booster.get_dump())
    assert importance["col_0"]["importance_weight"] == splits > 0
    # Without feature names on the booster, names map by position.
    unnamed = xgb.load_booster(xgb.train(BT_C, {"max_iterations": 5}, X, y).booster_json)
    by_position = xgb.global_importance(unnamed, names)
    assert by_position["col_0"]["importance_weight"] == unnamed.get_score(importance_type="weight")["f0"]
    with pytest.raises(ValueError, match="feature names"):
        xgb.global_importance(unnamed, names[:2])


def test_load_booster_reads_xgboost_json():
    X, y = binary_data(500)
    result = xgb.train(BT_C, {"max_iterations": 2}, X, y)
    booster = xgb.load_booster(result.booster_json)
    assert isinstance(booster, xgboost.Booster)
    assert booster.num_boosted_rounds() == 2
