"""The transit controller: one per border speaker, ExaBGP's API process. `params`, `verdict`,
`plan`, `decision` and `persistence` are pure; `daemon` gathers observations and acts."""
