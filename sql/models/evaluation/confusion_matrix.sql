-- The confusion matrix of a classifier on its evaluation split (expected_label, one column per
-- predicted label). A template: lakehouse_ml.bqml.sql.bind_template fills in `model`.
SELECT * FROM ML.CONFUSION_MATRIX(MODEL model)
