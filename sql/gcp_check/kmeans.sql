-- lakehouse-ml gcp-check: a tiny KMEANS with a TRANSFORM clause, registered in the Vertex AI Model
-- Registry, on the scratch table `rows`: its served instances carry the TRANSFORM's inputs, NULL
-- as the documented sentinels.
CREATE OR REPLACE MODEL check_kmeans
TRANSFORM (LN(1 + ABS(x)) AS log_x, n, s)
OPTIONS (
  model_type = 'KMEANS',
  num_clusters = 3,
  model_registry = 'VERTEX_AI',
  vertex_ai_model_id = 'lakehouse_ml_gcp_check_kmeans'
) AS
SELECT x, n, s FROM rows
