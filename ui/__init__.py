"""The Gradio web UI: a thin shell over sdcompose.Pipeline."""
