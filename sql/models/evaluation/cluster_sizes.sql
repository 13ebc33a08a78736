-- How many training rows each centroid of a KMEANS model takes.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model` and `training_rows`.
SELECT CENTROID_ID AS centroid_id, COUNT(*) AS row_count
FROM ML.PREDICT(MODEL model, TABLE training_rows)
GROUP BY centroid_id
ORDER BY centroid_id
