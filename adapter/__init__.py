"""varipipe.adapter: decide what the pipeline runs, from load and profiles.

    latency_model   l(b) = alpha + beta*b, fitted per (stage, variant, hardware)
    configurations  Limits, Weights, a stage's configurations priced at its load
    optimizer       solve(profile, load, sla, limits, weights) -> Decision (exact DP by default; CBC, HiGHS)
    explain         binding constraints and per-stage runners-up of a decision
    predictors      reactive, moving-max, ewma, lstm behind predict(history_rps)
    policies        make_policy(name, ctx): ipa, fa2-low/high, rim, static, ray, oracle, module:Class
    policy          the Policy protocol, Forecast, PolicyContext
    loop            ControlLoop: observe -> predict -> decide -> apply, with hysteresis
    synthetic       synthetic profiles for tests and benchmarks

Never imports varipipe.pipelines or Ray; torch only inside ``lstm``.
"""
