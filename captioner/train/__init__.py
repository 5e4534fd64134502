"""What trains a captioner and nothing that captions: datasets and batches, features cached
once, losses, validation and metrics, concept fitting, attention targets, fine-tuning from
corrections and its gate. Inference (``captioner.Captioner``) never imports it."""
