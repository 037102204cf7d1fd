"""Lists: the approved model's scores and explanations → one short list per team, for discussion.

`score` scores the cohort and explains the listed people; `reasons` turns their contributions
into sentences; `rows` adds tags, the sparkline and caveats; `views` shapes rows for a page and
a CSV; `publish` writes `huddle_lists` and each team's page; `outcomes` records what huddles
decided and reports it back.
"""
