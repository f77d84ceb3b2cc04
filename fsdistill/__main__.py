from fsdistill.cli import main

if __name__ == "__main__":
    main()
