"""Reproduce the figures of the layer-wise partial unlearning paper (Gogineni & Nadimi 2024).

One command per figure, each writing its numbers (JSON) and its figure (PNG)::

    python -m simulations.paper fig1 --out DIR   # MNIST: FA/RA over the unlearning steps
    python -m simulations.paper fig2 --out DIR   # OrganAMNIST (falls back to MNIST if missing)
    python -m simulations.paper fig3 --out DIR   # Grad-CAM of classes 3 and 1, before/after, RT
    python -m simulations.paper fig4 --out DIR   # efficacy vs exactly p% of affected batches
    python -m simulations.paper sweep --out DIR  # why partial amnesiac loses RA on class deletion
    python -m simulations.paper claims --fig1 DIR --fig4 DIR --out DIR  # the claims, checked

``--quick`` runs a small version in a minute or two. The paper published no code; where
its method text could not be read, ALGORITHMS.md gives our interpretation. What the runs
found, claim by claim: docs/PAPER_CLAIMS.md.
"""
