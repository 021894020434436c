"""The kopf operator that reconciles RecommenderCluster objects into shard StatefulSets and a router."""
