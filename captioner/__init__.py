"""An LSTM image captioner: encoder, COCO detector, LSTM decoder, search.

    from captioner import Captioner
    captioner = Captioner.from_checkpoint(int8=True)        # the shipped model
    print(captioner.caption([load_image("photo.jpg")])[0].caption)

``Captioner`` is loaded on first use, so that ``import captioner.wordlists`` (or any small
part) does not load the model's code.
"""

__version__ = "0.3.0"
__all__ = ["Captioner"]


def __getattr__(name: str):
    if name == "Captioner":
        from captioner.model import Captioner

        return Captioner
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
