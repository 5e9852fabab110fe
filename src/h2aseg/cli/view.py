"""``h2aseg view``: a local, offline web viewer for a folder of predictions (``docs/viewer.md``)."""

from __future__ import annotations

from pathlib import Path

import typer

from h2aseg.cli.common import err_console, fail


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
    """Serve a viewer for the predictions on http://127.0.0.1:PORT/ (this machine only) until Ctrl-C.

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
    print(f"h2aseg view: open {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("view")(view)
