-- lakehouse-ml gcp-check: a tiny LOGISTIC_REG without TRANSFORM, registered in the Vertex AI Model
-- Registry, on the scratch table `rows` (FLOAT64 x, INT64 n, STRING s, BOOL b, BOOL label). The
-- check creates it under run names (check_classifier_1, check_classifier_2) to register versions.
CREATE OR REPLACE MODEL check_classifier
OPTIONS (
  model_type = 'LOGISTIC_REG',
  input_label_cols = ['label'],
  model_registry = 'VERTEX_AI',
  vertex_ai_model_id = 'lakehouse_ml_gcp_check_classifier'
) AS
SELECT x, n, s, b, label FROM rows
