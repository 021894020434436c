"""The RecommenderCluster API models (the one source of the schema) and the CRD generated from them."""
