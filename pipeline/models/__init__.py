"""Networks: ResNet-18 backbones (nets.py) and the IEr encoders, correspondence head and AII (ier.py)."""
