"""5-d Poisson PINN trained with taylorc's collapsed Laplacian (see taylorc/demos/poisson.py).

python examples/poisson.py [--adam-steps N --lbfgs-steps N --figure poisson.png ...]
"""

from taylorc_contrib.demos.poisson import main

if __name__ == "__main__":
    main()
