"""The bundled demo pipeline (a CSV feed) and the script that regenerates it."""
