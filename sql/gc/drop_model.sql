-- Drop one BigQuery ML model (a training run's model that nothing serves any more: see
-- lakehouse_ml.deployment.collect_garbage). Dropping a registered model deletes its Vertex AI Model
-- Registry version; BigQuery refuses while that version is deployed.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model`.
DROP MODEL model
