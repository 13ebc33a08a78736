-- The iterations of a model's training run: loss, evaluation loss, duration (ML.TRAINING_INFO).
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model`.
SELECT * FROM ML.TRAINING_INFO(MODEL model)
ORDER BY iteration
