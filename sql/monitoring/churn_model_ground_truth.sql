-- Ground truth of churn_model's served predictions: every customer snapshot whose churn label
-- has been observed. The monitoring report matches served instances to these rows on the logged
-- feature values (an instance is one customer's snapshot), so the performance of what the endpoint
-- answered can be measured once the 30-day churn horizon has passed.
SELECT *
FROM customer_features
WHERE churned IS NOT NULL
