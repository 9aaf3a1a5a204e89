from fedtorch.cli import main

main()
