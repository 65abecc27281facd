"""Report: what the host writes about its artifacts for people to read.

`tools` (the tool versions an artifact's manifest entry records), `numerics` (device-vs-host figures),
`zoo` (the zoo table) and `html_page` (`pocketformer report`: one HTML page with tables and plots).
"""
