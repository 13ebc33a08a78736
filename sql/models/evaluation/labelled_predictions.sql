-- A model's predictions on rows, with every input column (the label among them) passed through.
-- Bound to the model's training query, it feeds the ROC curve and confusion matrix where
-- ML.ROC_CURVE / ML.CONFUSION_MATRIX are not available (rows of both splits: the curve is a little
-- optimistic next to ML.ROC_CURVE's) and the monitoring baseline of a new version; bound to
-- sql/gate/<model>.sql, it gives a candidate's predictions on the gate rows.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model` and `training_rows`.
SELECT * FROM ML.PREDICT(MODEL model, TABLE training_rows)
