#!/bin/sh
# One real scene, from a public repository's OSM test extract to the deliverables in $BUILD/out:
#   SCENE=baltimore BUILD=/work/realdata_extra/baltimore sh benchmarks/realdata/make/build.sh
# The scene's ../<SCENE>/make/scene.env names the source (SOURCE_REPO, SOURCE_COMMIT, SOURCE_PATH, SOURCE_SHA256,
# SOURCE_FMT pbf|osm|osm.gz, SOURCE_SORT yes when it is not in id order), the window WIN (W,S,E,N; empty: only list candidate windows), UTM_EPSG, the extract
# margins MARGIN_LON/MARGIN_LAT (degrees) and DESC. These scripts are ../london/make/ with those values read
# from the environment instead of written in (same Carto, truth, satellite and check code), so London, Moscow and
# Copenhagen rebuild with them too.
# Needs, as root: the Debian packages openstreetmap-carto osm2pgsql postgis postgresql-15-postgis-3 python3-mapnik
# osmium-tool python3-pyosmium python3-gdal fonts-noto-* (../../shared/realdata/porto/make.md), PostgreSQL running
# with a superuser role `root`, and the repositories under /work/.mirror (the `fetch` tool) incl.
# gravitystorm/openstreetmap-carto for patterns/.
set -e
M=$(dirname "$(readlink -f "$0")")
. "$M/../$SCENE/make/scene.env"
export BUILD UTM_EPSG WIN DESC MARGIN_LON MARGIN_LAT CAND_SIZES CAND_STEP_M DB=gis_$SCENE
mkdir -p "$BUILD"; cd "$BUILD"
R=/work/.mirror/$(echo "$SOURCE_REPO" | tr / +)/repo
C=/work/.mirror/gravitystorm+openstreetmap-carto/repo
# 1. the source, checked against its sha256, as PBF
git -C "$R" show "$SOURCE_COMMIT:$SOURCE_PATH" > source.raw
echo "$SOURCE_SHA256  source.raw" | sha256sum -c -
case "$SOURCE_FMT" in
  pbf) mv source.raw source.osm.pbf ;;
  osm) mv source.raw source.osm; osmium cat source.osm -o source.osm.pbf --overwrite ;;
  osm.gz) gunzip -c source.raw > source.osm; osmium cat source.osm -o source.osm.pbf --overwrite ;;
esac
# osm2pgsql needs nodes, ways, relations in id order; some test files are not (SOURCE_SORT=yes)
if [ "$SOURCE_SORT" = yes ]; then osmium sort source.osm.pbf -o sorted.osm.pbf --overwrite; mv sorted.osm.pbf source.osm.pbf; fi
if [ -z "$WIN" ]; then /usr/bin/python3 "$M/candidates.py"; exit 0; fi
/usr/bin/python3 "$M/area.py" > /dev/null                      # -> area.json
# 2. import into the scene's own database (the Debian style.xml names `gis`; the copy below names gis_<scene>)
dropdb --if-exists "$DB"; createdb "$DB"
psql -q -d "$DB" -c 'CREATE EXTENSION postgis; CREATE EXTENSION hstore;'
osm2pgsql -G --hstore --slim --drop -d "$DB" \
  --style /usr/share/openstreetmap-carto-common/openstreetmap-carto.style \
  --tag-transform-script /usr/share/openstreetmap-carto-common/openstreetmap-carto.lua \
  source.osm.pbf > osm2pgsql.log 2>&1
psql -q -d "$DB" -f /usr/share/openstreetmap-carto-common/indexes.sql
psql -q -d "$DB" -f "$M/external_tables.sql" 2>/dev/null
# 3. the style: Debian's compiled style.xml with the postinst's dbname substitution, + upstream v5.7.0 patterns/
rm -rf carto; mkdir -p carto
sed -e"s/\[gis\]/\[$DB\]/" /usr/share/openstreetmap-carto-common/style.xml > carto/style.xml
ln -s /usr/share/openstreetmap-carto-common/symbols carto/symbols
ln -s /usr/share/fonts/truetype/noto carto/fonts
git -C "$C" archive v5.7.0 patterns | tar -x -C carto
mkdir -p out
/usr/bin/python3 "$M/render_carto.py" out/map_carto.tif > render.log 2>&1
# 4. the vector extract for the area (complete ways and multipolygons) and its GDAL conversion
B=$(/usr/bin/python3 -c "import json,os; a=json.load(open('area.json'))['lonlat_bbox']; mx,my=float(os.environ['MARGIN_LON']),float(os.environ['MARGIN_LAT']); print(','.join(str(round(v,6)) for v in (a[0]-mx,a[1]-my,a[2]+mx,a[3]+my)))")
osmium extract --strategy smart --set-bounds -b "$B" source.osm.pbf -o extract.osm.pbf --overwrite
rm -f out/map.gpkg
ogr2ogr -f GPKG out/map.gpkg extract.osm.pbf points lines multipolygons -t_srs EPSG:4326
cp extract.osm.pbf out/extract.osm.pbf
# 5. truth, stand-in imagery, checks, preview
/usr/bin/python3 "$M/truth.py" > truth.txt 2>/dev/null
SAT_NOISE=4 SAT_JPEG_QUALITY=85 /usr/bin/python3 "$M/satellite.py" out/satellite.tif 2>/dev/null
/usr/bin/python3 "$M/align_check.py" 2>/dev/null > alignment.txt
/usr/bin/python3 "$M/preview.py"
cp area.json truth.txt alignment.txt out/
sha256sum out/*
