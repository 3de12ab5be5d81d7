"""``tabom demo`` and ``tabom sweep``: the whole pipeline on the shipped base model.

``config`` (:class:`DemoConfig`), ``pipeline`` (the stages and ``run_demo``), ``report``
(``report.md`` and the plots), ``sweep`` (``run_sweep``). Imports inside the package flow one
way: pipeline -> config, report; report -> config; sweep -> config, pipeline.
"""
