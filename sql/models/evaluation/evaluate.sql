-- The evaluation metrics of a model on its evaluation split (ML.EVALUATE without input data).
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model`.
SELECT * FROM ML.EVALUATE(MODEL model)
