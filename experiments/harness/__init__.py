"""What every experiment shares, one job per module:

    experiment  Experiment / Report declarations and the shared main()
    args        the shared flags (--quick/--full, --seeds, --out, --jobs, --replot)
    runs        run_arms (the worker pool and its progress bar), run_t5 (tiny-T5
                runs, resumed or copied from a finished twin by config fingerprint)
    testbed     the routing testbed's configs (testbed_config, testbed_moe, ...)
    synthetic   the clustered regression task and its one-seed trainer
    probes      routing NMI and table recall of a trained tiny T5
    stats       paired differences, 95% intervals, precondition, verdict rule
    report      tables, table.md / results.json with the code version
    plots       figure() and seed-mean curves with bands
    worker      set-up of the spawned worker processes

Kept free of imports: a spawned worker imports `experiments.harness.worker`
(and so this package) before jax may be imported.
"""
