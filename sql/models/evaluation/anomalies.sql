-- Anomalies among the training rows of a KMEANS model, per centroid, at the given contamination.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model`, `training_rows` and
-- @contamination (as a number literal).
SELECT
  CENTROID_ID AS centroid_id,
  COUNT(*) AS row_count,
  COUNTIF(is_anomaly) AS anomalies,
  MAX(normalized_distance) AS max_normalized_distance
FROM ML.DETECT_ANOMALIES(MODEL model, STRUCT(@contamination AS contamination), TABLE training_rows)
GROUP BY centroid_id
ORDER BY centroid_id
