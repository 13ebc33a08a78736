-- The gate rows in the k-means candidate's input space: ML.TRANSFORM applies the model's TRANSFORM
-- clause (for models created with one), and passes the other columns (the row number `gate_row`)
-- through.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model` and the table `gate_rows`.
SELECT * FROM ML.TRANSFORM(MODEL model, TABLE gate_rows)
