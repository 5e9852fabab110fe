"""``h2aseg view``: a local, offline web viewer for a folder of predictions (``docs/viewer.md``)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from h2aseg.cli.common import ctrl_c_is_ignored, err_console, fail, sigterm_as_interrupt


def view(
    pred: Path = typer.Option(
        ..., "--pred", help="Predictions folder: <case_id>.nii.gz per study (h2aseg predict)."
    ),
    data: Path = typer.Option(
        ..., "--data", help="The dataset the predictions are of (any supported layout)."
    ),
    gt: Path | None = typer.Option(
        None,
        "--gt",
        help="Ground-truth masks (a folder of <case_id>.nii.gz or a layout root) [the data's labels].",
    ),
    layout: str = typer.Option("auto", "--layout", help="Layout of --data."),
    port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free port)."),
) -> None:
    """Serve a viewer for the predictions on http://127.0.0.1:PORT/ (this machine only) until Ctrl-C or
    SIGTERM (``kill PID``; a background job started by a script ignores Ctrl-C, and then the line that
    gives the address says ``kill PID``).

    One page per study: CT (window presets), PET as SUV fused over it, the predicted mask and the ground
    truth in axial, coronal, sagittal and 3D render views (NiiVue, shipped with the package: nothing is
    fetched from the internet), and the lesion table; a click on a lesion moves the crosshair to it.
    """
    from h2aseg.errors import InputError
    from h2aseg.viewer.server import make_server

    try:
        server = make_server(pred, data, gt, layout=layout, port=port)
    except InputError as e:
        raise fail(str(e)) from None
    except OSError as e:  # the port is taken
        raise fail(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
    n = len(server.catalog.studies)
    err_console.print(
        f"{n} stud{'y' if n == 1 else 'ies'}; serving only {pred}, {data}" + (f", {gt}" if gt else "")
    )
    how = f"kill {os.getpid()} stops it" if ctrl_c_is_ignored() else "Ctrl-C stops it"
    print(f"h2aseg view: open {server.url} ({how})", flush=True)
    try:
        with sigterm_as_interrupt():
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("view")(view)
