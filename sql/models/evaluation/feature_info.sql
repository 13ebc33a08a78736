-- The feature columns of a model with their statistics (ML.FEATURE_INFO).
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model`.
SELECT * FROM ML.FEATURE_INFO(MODEL model)
