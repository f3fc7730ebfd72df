"""Networks and what they need around them: ResNet-18 backbones (nets.py), the IEr encoders, head and AII
(ier.py), model inputs and their normalisation (inputs.py), model files (files.py)."""
