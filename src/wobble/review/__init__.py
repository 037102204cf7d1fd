"""Review: the web page where a team reads its list and records what the huddle decided (`app`),
with each team's access tokens (`tokens`)."""
