"""Device: what travels to the target and what comes back from it.

`bundles` (a self-contained verification bundle: artifacts, real samples, expected outputs, checksums),
`verify` (does the artifact compute on the device what it computes here: over SSH, adb or locally) and
`android` (the Android demo app measuring a bundle on the phone).
"""
