"""Where videos come from: the toy world generator and the real datasets' index readers."""
