from examples.unet_benchmark.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
