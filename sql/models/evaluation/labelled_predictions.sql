-- Predictions of a classifier on its labelled training rows: the input of the ROC curve and
-- confusion matrix where ML.ROC_CURVE / ML.CONFUSION_MATRIX are not available (the local engine
-- until it has them). Rows of both splits: the curve is optimistic next to ML.ROC_CURVE's.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model` and `training_rows`.
SELECT * FROM ML.PREDICT(MODEL model, TABLE training_rows)
