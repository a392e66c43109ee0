"""Array operations on label maps: connected components and their rules, bounding boxes, vessel diameters."""
