-- The ROC curve of a binary classifier on its evaluation split, one row per threshold.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model`.
SELECT * FROM ML.ROC_CURVE(MODEL model)
ORDER BY threshold
