-- The clusters a k-means candidate gives the gate rows: ML.PREDICT's CENTROID_ID, with every
-- input column (the row number `gate_row` and the serving version's `serving_centroid_id` among
-- them) passed through.
-- A template: lakehouse_ml.bqml.sql.bind_template fills in `model` and the table `gate_rows`.
SELECT * FROM ML.PREDICT(MODEL model, TABLE gate_rows)
