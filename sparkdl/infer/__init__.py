"""Using a trained model: ``ImageClassifier`` (bytes -> labels, no Spark), batch and streaming prediction on Spark,
the model server and export."""
