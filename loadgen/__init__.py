"""Load generation and policy comparison (issue 7).

    traces      per-second rate files, windows, scaling, synthetic shapes, seeded arrivals
    replayer    open-loop HTTP replayer (``varipipe load``), JSON-lines request records
    locustfile  a locust ``LoadTestShape`` following the same traces
    service     batch service-time distributions from a profile
    simulator   discrete-event simulator driven by the adapter's policies (``varipipe simulate``)
    scenario    experiment scenarios (pydantic) and their resolution against a trace and profile
    runs        one simulated policy run, wired like the live control loop
    experiment  every policy on the same arrivals, sim or live (``varipipe experiment``)
    report      PNG plots of an experiment

Nothing here imports ``varipipe.pipelines`` or Ray: the live pipeline is reached
over HTTP, and the experiment command injects how to start it.
"""
