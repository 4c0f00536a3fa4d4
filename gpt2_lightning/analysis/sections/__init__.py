"""The analysis's sections: each measures (or trains and measures) one question and returns its findings, plain
numbers that the run cache can keep, and judges them with `gpt2_lightning.analysis.statistics`. Plots and prose are
made from the findings elsewhere (`plots.py`, `report.py`)."""
